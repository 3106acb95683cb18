//! A small client for the admin API, shared by `starling ctl`, `starling dev`
//! and the tests: connects to the first reachable address and stamps the
//! admin token on every call.
use std::time::Duration;

use starling_proto::admin::admin_client::AdminClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

/// A connected admin client.
#[derive(Clone)]
pub struct AdminConn {
    pub client: AdminClient<Channel>,
    pub addr: String,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
}

/// Why no admin connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the admin token must be printable ASCII")]
    BadToken,
    #[error("no admin address given")]
    NoAddress,
    #[error("cannot reach any node ({0})")]
    Unreachable(String),
}

impl AdminConn {
    /// Connects to the first address in `addrs` that answers.
    pub async fn connect(
        addrs: &[String],
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<AdminConn, ConnectError> {
        let token = match token {
            Some(t) => Some(
                MetadataValue::try_from(format!("Bearer {t}"))
                    .map_err(|_| ConnectError::BadToken)?,
            ),
            None => None,
        };
        if addrs.is_empty() {
            return Err(ConnectError::NoAddress);
        }
        let mut failures = Vec::new();
        for addr in addrs {
            let endpoint = match Endpoint::from_shared(format!("http://{addr}")) {
                Ok(e) => e,
                Err(e) => {
                    failures.push(format!("{addr}: {e}"));
                    continue;
                }
            };
            let endpoint = endpoint
                .connect_timeout(Duration::from_secs(2).min(timeout))
                .timeout(timeout)
                .tcp_nodelay(true);
            match endpoint.connect().await {
                Ok(ch) => {
                    return Ok(AdminConn {
                        client: AdminClient::new(ch),
                        addr: addr.clone(),
                        token,
                    })
                }
                Err(e) => failures.push(format!("{addr}: {}", error_chain(&e))),
            }
        }
        Err(ConnectError::Unreachable(failures.join("; ")))
    }

    /// Wraps a request message, adding the token.
    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", t.clone());
        }
        r
    }
}

/// An error with its sources, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}
