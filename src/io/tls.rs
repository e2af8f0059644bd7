//! `wss://` through rustls. Encryption is per socket, but only at the last
//! step: queues still hold the shared plaintext frames, and a frame is
//! encrypted only when the socket has room for it.

use std::io::{self, IoSlice, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

use crate::config::TlsConfig;
use crate::error::ConfigError;
use crate::fanout::queue::{Flushed, OutQueue};

/// Ciphertext rustls may hold for one socket beyond what the kernel took.
const TLS_BUFFER_LIMIT: usize = 64 * 1024;

/// Loads the certificate chain and key named in `[tls]`.
pub(crate) fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, ConfigError> {
    let certs = load_certs(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| {
        ConfigError::invalid(
            "tls.key",
            format!("{}: no usable private key: {e}", tls.key.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid("tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError::invalid("tls.key", format!("does not match tls.cert: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bad = |e: String| ConfigError::invalid("tls.cert", format!("{}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate found".into()));
    }
    Ok(certs)
}

pub(crate) fn accept(config: &Arc<ServerConfig>) -> io::Result<Box<ServerConnection>> {
    let mut tls = ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
    tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
    Ok(Box::new(tls))
}

/// Reads decrypted bytes into `buf`: `Ok(0)` at the end of the stream,
/// `WouldBlock` when the socket has nothing more.
pub(crate) fn read_plaintext(
    tls: &mut ServerConnection,
    socket: &mut impl Read,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if tls.read_tls(socket)? == 0 {
            return Ok(0);
        }
        tls.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
}

/// Moves queued frames through the TLS session onto the socket.
pub(crate) fn flush(
    out: &mut OutQueue,
    tls: &mut ServerConnection,
    socket: &mut impl Write,
) -> io::Result<Flushed> {
    let mut total = 0;
    loop {
        while tls.wants_write() {
            match tls.write_tls(socket) {
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Flushed {
                        bytes: total,
                        blocked: true,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if out.is_empty() {
            return Ok(Flushed {
                bytes: total,
                blocked: false,
            });
        }
        let moved = out.flush_to(&mut Plaintext(tls))?;
        if moved.bytes == 0 && !tls.wants_write() {
            // Still handshaking: the frames wait for the session.
            return Ok(Flushed {
                bytes: total,
                blocked: true,
            });
        }
    }
}

/// Sends the TLS close_notify alert, best effort, before our FIN.
pub(crate) fn close_notify(tls: &mut ServerConnection, socket: &mut impl Write) {
    tls.send_close_notify();
    while tls.wants_write() {
        if tls.write_tls(socket).is_err() {
            return;
        }
    }
}

/// The session's plaintext side as a sink that says `WouldBlock` when its
/// buffer is full, so `OutQueue` keeps the rest.
struct Plaintext<'a>(&'a mut ServerConnection);

impl Write for Plaintext<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self.0.writer().write_vectored(bufs)? {
            0 if bufs.iter().any(|b| !b.is_empty()) => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
