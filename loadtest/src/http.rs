//! Just enough HTTP/1.1 response parsing for the publisher's keep-alive
//! connection: status, Content-Length, Connection: close.

#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Where the body starts in the buffer.
    pub body_start: usize,
    /// Bytes of the buffer used by head and body.
    pub len: usize,
    /// The server will close the connection after this response.
    pub close: bool,
}

pub const MAX_HEAD: usize = 16 * 1024;

/// Parses a complete response at the start of `buf`; `Ok(None)` if more
/// bytes are needed.
pub fn parse_response(buf: &[u8]) -> Result<Option<Response>, &'static str> {
    let Some(end) = crate::scan::find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err("response head too long")
        } else {
            Ok(None)
        };
    };
    let status = crate::handshake::status_code(buf).ok_or("bad status line")?;
    let http10 = buf.starts_with(b"HTTP/1.0");
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "non-UTF-8 head")?;
    let mut content_length: Option<usize> = None;
    let mut close = http10;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            return Err("bad header line");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse().map_err(|_| "bad content-length")?);
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                close = true;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                close = false;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked responses are not supported");
        }
    }
    let body_start = end + 4;
    let body_len = match (content_length, status) {
        (Some(n), _) => n,
        (None, 100..=199 | 204 | 304) => 0,
        (None, _) => return Err("response without content-length"),
    };
    if buf.len() < body_start + body_len {
        return Ok(None);
    }
    Ok(Some(Response {
        status,
        body_start,
        len: body_start + body_len,
        close,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_response() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 10\r\n\r\n{\"seq\":42}";
        let got = parse_response(r).ok().flatten();
        assert_eq!(
            got,
            Some(Response {
                status: 200,
                body_start: r.len() - 10,
                len: r.len(),
                close: false
            })
        );
    }

    #[test]
    fn partial_then_complete() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"seqs\":[1,2]}";
        for cut in 0..r.len() - 1 {
            assert_eq!(parse_response(&r[..cut]), Ok(None), "cut {cut}");
        }
        assert!(matches!(parse_response(&r[..r.len() - 1]), Ok(Some(_))));
    }

    #[test]
    fn pipelined_leftover_is_not_consumed() {
        let mut r =
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n"
                .to_vec();
        let first = r.len();
        r.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let got = parse_response(&r).ok().flatten();
        assert_eq!(got.map(|g| (g.status, g.len)), Some((503, first)));
    }

    #[test]
    fn close_and_errors() {
        let r = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}";
        assert!(matches!(
            parse_response(r),
            Ok(Some(Response { close: true, .. }))
        ));
        let r = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(
            parse_response(r),
            Ok(Some(Response { close: true, .. }))
        ));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
        assert!(parse_response(&vec![b'a'; MAX_HEAD + 1]).is_err());
    }
}
