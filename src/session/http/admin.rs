//! The admin views' requests: the operator's token and the query string.
//! The answers need every reactor, so the reactor gathers them
//! (`io::gather`).

use tracing::info;

use super::{ConnectionSort, Query};
use crate::auth::AdminAuth;
use crate::proto::handshake::RequestHead;
use crate::proto::http::{bearer_token, query_param, Status};
use crate::session::SessionContext;
use crate::stats::Stats;

/// Rows when the request names no `limit`.
const DEFAULT_ROWS: usize = 100;

/// A refused admin request: status, error code, message.
pub(super) type Refusal = (Status, &'static str, String);

/// Checks the operator's token and reads the query of an admin view.
/// Without `admin.tokens` the views answer 404, as if they did not exist.
pub(super) fn admin_query(
    head: &RequestHead,
    connections: bool,
    cx: &SessionContext,
) -> Result<Query, Refusal> {
    let bearer = head.authorization.as_deref().and_then(bearer_token);
    match cx.tokens.check_admin(bearer) {
        AdminAuth::Off => {
            return Err((
                Status::NotFound,
                "not_found",
                "the admin views are off: set admin.tokens to turn them on".into(),
            ))
        }
        AdminAuth::Refused => {
            Stats::add(&cx.stats.auth_failures, 1);
            info!("admin view {} refused: no valid admin token", head.path);
            return Err((
                Status::Unauthorized,
                "unauthorized",
                "send Authorization: Bearer <admin token>".into(),
            ));
        }
        AdminAuth::Allowed => {}
    }
    let query = head.query.as_deref().unwrap_or_default();
    let max_rows = cx.config.admin.max_rows;
    let limit = match query_param(query, "limit") {
        None => DEFAULT_ROWS.min(max_rows),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=max_rows).contains(&n) => n,
            _ => {
                return Err(bad_request(format!(
                    "limit must be a number from 1 to admin.max_rows ({max_rows}), not {text:?}"
                )))
            }
        },
    };
    if !connections {
        return Ok(Query::Subscriptions { limit });
    }
    let sort = match query_param(query, "sort").as_deref() {
        None | Some("queue") => ConnectionSort::Queue,
        Some("resyncs") => ConnectionSort::Resyncs,
        Some("age") => ConnectionSort::Age,
        Some(other) => {
            return Err(bad_request(format!(
                "sort must be queue, resyncs or age, not {other:?}"
            )))
        }
    };
    Ok(Query::Connections { sort, limit })
}

fn bad_request(message: String) -> Refusal {
    (Status::BadRequest, "bad_request", message)
}
