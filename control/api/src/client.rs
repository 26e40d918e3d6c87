//! The client side of the agent's API: HTTP/1.1 over the agent's unix socket, one request per
//! connection, on a single-threaded tokio runtime made per call (the CLI makes a handful of
//! calls; a long-lived runtime would buy nothing).
//!
//! A call waits for the agent as long as it takes unless the client was given a timeout
//! ([`Client::with_timeout`]): a CNI plugin, which a runtime runs with its own deadline, must
//! fail with a clear error rather than hang on an agent that accepted the connection and does
//! not answer.

use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::Error;

/// A client of the agent's API (the CLI's, the lab's, the CNI plugin's).
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    /// The longest one request may take, from connecting to the answer's last byte; `None`:
    /// no limit.
    timeout: Option<Duration>,
}

impl Client {
    /// A client for the agent listening on `socket`, whose calls wait as long as the agent
    /// takes.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            timeout: None,
        }
    }

    /// The same client, each of whose requests fails with [`Error::Timeout`] when the agent has
    /// not answered it whole within `after` (connecting included). For a stream
    /// ([`Client::stream_lines`]) it bounds the wait for the stream to open, not the stream.
    pub fn with_timeout(self, after: Duration) -> Self {
        Client {
            timeout: Some(after),
            ..self
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// `GET /v1/status`: the agent's health, workers, ports, counters and pod network.
    pub fn status(&self) -> Result<crate::Status, Error> {
        self.get("/v1/status")
    }

    /// `GET /v1/endpoints`: every endpoint of this node (those whose interface is missing
    /// included).
    pub fn endpoints(&self) -> Result<Vec<crate::Endpoint>, Error> {
        self.get("/v1/endpoints")
    }

    /// `GET /v1/endpoints/{namespace}/{name}`; an endpoint the agent does not have is
    /// [`Error::Api`] with status 404.
    pub fn endpoint(&self, namespace: &str, name: &str) -> Result<crate::Endpoint, Error> {
        self.get(&endpoint_path(namespace, name))
    }

    /// `PUT /v1/endpoints/{namespace}/{name}`: creates or replaces the endpoint (and opens its
    /// interface's port when it is new). Returns it as the agent holds it.
    pub fn put_endpoint(
        &self,
        namespace: &str,
        name: &str,
        req: &crate::EndpointRequest,
    ) -> Result<crate::Endpoint, Error> {
        self.put(&endpoint_path(namespace, name), req)
    }

    /// `DELETE /v1/endpoints/{namespace}/{name}`: removes the endpoint and closes its port. One
    /// the agent does not have is [`Error::Api`] with status 404.
    pub fn delete_endpoint(&self, namespace: &str, name: &str) -> Result<(), Error> {
        self.delete(&endpoint_path(namespace, name))
    }

    /// `GET path`, decoded as JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        decode(path, &self.get_bytes(path)?)
    }

    /// `GET path`, as raw bytes.
    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>, Error> {
        self.request("GET", path, None)
    }

    /// `PUT path` with a JSON body; the answer decoded as JSON.
    pub fn put<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        let out = self.request("PUT", path, Some(encode(body)?))?;
        decode(path, &out)
    }

    /// `POST path` with a JSON body; the answer decoded as JSON.
    pub fn post<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        let out = self.request("POST", path, Some(encode(body)?))?;
        decode(path, &out)
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Result<(), Error> {
        self.request("DELETE", path, None).map(|_| ())
    }

    /// `DELETE path`; the answer decoded as JSON.
    pub fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        decode(path, &self.request("DELETE", path, None)?)
    }

    /// `POST path` with `body` as it is (JSON or, for policies, YAML text); the answer decoded
    /// as JSON.
    pub fn post_raw<T: DeserializeOwned>(&self, path: &str, body: Vec<u8>) -> Result<T, Error> {
        decode(path, &self.request("POST", path, Some(body))?)
    }

    /// `POST /v1/services`: imports Kubernetes Service and EndpointSlice YAML, all or nothing.
    /// Returns the new tables revision.
    pub fn import_services(&self, yaml: &str) -> Result<u64, Error> {
        let r: serde_json::Value = self.post_raw("/v1/services", yaml.as_bytes().to_vec())?;
        revision_of("/v1/services", &r)
    }

    /// `GET /v1/services`: every service the agent holds.
    pub fn services(&self) -> Result<Vec<crate::ServiceView>, Error> {
        self.get("/v1/services")
    }

    /// `GET /v1/services/{namespace}/{name}`.
    pub fn service(&self, namespace: &str, name: &str) -> Result<crate::ServiceView, Error> {
        self.get(&format!("/v1/services/{namespace}/{name}"))
    }

    /// `DELETE /v1/services/{namespace}/{name}`. Returns the new tables revision.
    pub fn delete_service(&self, namespace: &str, name: &str) -> Result<u64, Error> {
        let path = format!("/v1/services/{namespace}/{name}");
        let r: serde_json::Value = self.delete_json(&path)?;
        revision_of(&path, &r)
    }

    /// `GET /v1/fqdn/cache`: every endpoint's resolved names and their addresses.
    pub fn fqdn_cache(&self) -> Result<Vec<crate::FqdnCacheEntry>, Error> {
        self.get("/v1/fqdn/cache")
    }

    /// `DELETE /v1/fqdn/cache`: removes the names `matchpattern` (a Cilium `matchPattern`)
    /// matches, every name when `None`, and the addresses they taught. Returns what went.
    pub fn fqdn_cache_clean(
        &self,
        matchpattern: Option<&str>,
    ) -> Result<crate::FqdnCleaned, Error> {
        let path = match matchpattern {
            Some(p) => format!("/v1/fqdn/cache?matchpattern={}", percent_encode(p)),
            None => "/v1/fqdn/cache".to_string(),
        };
        self.delete_json(&path)
    }

    /// `GET /v1/nodes`: the cluster's nodes as this agent knows them.
    pub fn nodes(&self) -> Result<Vec<crate::NodeView>, Error> {
        self.get("/v1/nodes")
    }

    /// `PUT /v1/nodes/{name}`: adds or replaces a node. Returns it as the agent holds it.
    pub fn put_node(&self, name: &str, req: &crate::NodeRequest) -> Result<crate::NodeView, Error> {
        self.put(&format!("/v1/nodes/{}", percent_encode(name)), req)
    }

    /// `DELETE /v1/nodes/{name}`.
    pub fn delete_node(&self, name: &str) -> Result<(), Error> {
        self.delete(&format!("/v1/nodes/{}", percent_encode(name)))
    }

    /// `GET /v1/remote-endpoints`: the other nodes' pods this agent applies policy to.
    pub fn remote_endpoints(&self) -> Result<Vec<crate::RemoteEndpointView>, Error> {
        self.get("/v1/remote-endpoints")
    }

    /// `PUT /v1/remote-endpoints/{namespace}/{name}`: adds or replaces a pod of another node.
    /// Returns it as the agent holds it.
    pub fn put_remote_endpoint(
        &self,
        namespace: &str,
        name: &str,
        req: &crate::RemoteEndpointRequest,
    ) -> Result<crate::RemoteEndpointView, Error> {
        self.put(&remote_endpoint_path(namespace, name), req)
    }

    /// `DELETE /v1/remote-endpoints/{namespace}/{name}`.
    pub fn delete_remote_endpoint(&self, namespace: &str, name: &str) -> Result<(), Error> {
        self.delete(&remote_endpoint_path(namespace, name))
    }

    /// `GET /v1/encryption`: keys, peers and ESP errors.
    pub fn encryption(&self) -> Result<crate::EncryptionStatus, Error> {
        self.get("/v1/encryption")
    }

    fn runtime() -> Result<tokio::runtime::Runtime, Error> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                what: "starting the client runtime".into(),
                source,
            })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Error> {
        let unreachable = || Error::AgentUnreachable {
            socket: self.socket.clone(),
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|_| unreachable())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| unreachable())?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "xylem-agent");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Api {
                status: 0,
                message: e.to_string(),
            })?;
        let resp = sender.send_request(req).await.map_err(|_| unreachable())?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|_| unreachable())?
                .to_bytes()
                .to_vec();
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(Error::Api { status, message });
        }
        Ok(resp)
    }

    fn request(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Vec<u8>, Error> {
        let rt = Self::runtime()?;
        rt.block_on(self.bounded(async {
            let resp = self.send(method, path, body).await?;
            Ok(resp
                .into_body()
                .collect()
                .await
                .map_err(|_| Error::AgentUnreachable {
                    socket: self.socket.clone(),
                })?
                .to_bytes()
                .to_vec())
        }))
    }

    /// `fut`, failing with [`Error::Timeout`] once the client's timeout has passed.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let Some(after) = self.timeout else {
            return fut.await;
        };
        tokio::time::timeout(after, fut).await.unwrap_or_else(|_| {
            Err(Error::Timeout {
                socket: self.socket.clone(),
                after,
            })
        })
    }

    /// `GET path` as a stream of lines: calls `on_open` once the agent has answered (its
    /// response headers arrived, so the stream is live), then `on_line` for each line until the
    /// stream ends, `on_line` returns false, or Ctrl-C (SIGINT) / SIGTERM arrives, and
    /// `on_chunk_end` after the lines of each piece of body that arrived (where a caller that
    /// buffers its output flushes it). Returns why it stopped.
    pub fn stream_lines(
        &self,
        path: &str,
        on_open: impl FnOnce(),
        mut on_line: impl FnMut(&str) -> bool,
        mut on_chunk_end: impl FnMut(),
    ) -> Result<StreamEnd, Error> {
        let rt = Self::runtime()?;
        rt.block_on(async {
            // Installed before anything else, once: a signal that arrives between two polls is
            // kept by the stream rather than lost.
            let sig = |kind, what: &str| {
                tokio::signal::unix::signal(kind).map_err(|source| Error::Io {
                    what: format!("installing a {what} handler"),
                    source,
                })
            };
            let mut int = sig(tokio::signal::unix::SignalKind::interrupt(), "SIGINT")?;
            let mut term = sig(tokio::signal::unix::SignalKind::terminate(), "SIGTERM")?;
            let resp = tokio::select! {
                r = self.bounded(self.send("GET", path, None)) => r?,
                _ = int.recv() => return Ok(StreamEnd::Interrupted),
                _ = term.recv() => return Ok(StreamEnd::Interrupted),
            };
            on_open();
            let mut body = resp.into_body();
            let mut buf: Vec<u8> = Vec::new();
            loop {
                let frame = tokio::select! {
                    f = body.frame() => f,
                    _ = int.recv() => return Ok(StreamEnd::Interrupted),
                    _ = term.recv() => return Ok(StreamEnd::Interrupted),
                };
                let Some(frame) = frame else {
                    return Ok(StreamEnd::Ended);
                };
                let frame = frame.map_err(|_| Error::AgentUnreachable {
                    socket: self.socket.clone(),
                })?;
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                buf.extend_from_slice(data);
                let mut start = 0;
                while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
                    let text = String::from_utf8_lossy(&buf[start..start + nl]);
                    start += nl + 1;
                    if !on_line(&text) {
                        return Ok(StreamEnd::Stopped);
                    }
                }
                buf.drain(..start);
                on_chunk_end();
            }
        })
    }
}

/// `s` as a query parameter's value: every byte but the unreserved ones (RFC 3986) and `*`
/// percent-encoded, so the agent gets a bad pattern as it was written and can name it.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~*".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The path of the endpoint `namespace/name`.
fn endpoint_path(namespace: &str, name: &str) -> String {
    format!(
        "/v1/endpoints/{}/{}",
        percent_encode(namespace),
        percent_encode(name)
    )
}

/// The path of the remote endpoint `namespace/name`.
fn remote_endpoint_path(namespace: &str, name: &str) -> String {
    format!(
        "/v1/remote-endpoints/{}/{}",
        percent_encode(namespace),
        percent_encode(name)
    )
}

/// A request body as JSON.
fn encode<B: serde::Serialize>(body: &B) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(body).map_err(|e| Error::Api {
        status: 0,
        message: format!("the request could not be encoded: {e}"),
    })
}

/// The agent's (successful) answer to `path`, decoded.
fn decode<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Api {
        status: 200,
        message: format!("undecodable answer to {path}: {e}"),
    })
}

/// The `revision` of an answer `{"revision": N}` to `path`.
fn revision_of(path: &str, v: &serde_json::Value) -> Result<u64, Error> {
    v["revision"].as_u64().ok_or_else(|| Error::Api {
        status: 200,
        message: format!("undecodable answer to {path}: no revision in {v}"),
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Client;
    use crate::Error;

    /// A socket that accepts connections and never answers: an agent stuck mid-request.
    fn silent_agent(tag: &str) -> (std::path::PathBuf, std::os::unix::net::UnixListener) {
        let path = std::env::temp_dir().join(format!(
            "xylem-api-client-{tag}-{}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        (path, l)
    }

    #[test]
    fn a_silent_agent_fails_the_call_once_the_timeout_passes() {
        let (path, listener) = silent_agent("silent");
        let c = Client::new(&path).with_timeout(Duration::from_millis(300));
        let t = Instant::now();
        let e = c.status().unwrap_err();
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        match &e {
            Error::Timeout { socket, after } => {
                assert_eq!(socket, &path);
                assert_eq!(*after, Duration::from_millis(300));
            }
            e => panic!("not a timeout: {e:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains(&path.display().to_string())
                && msg.contains("did not answer within 300ms")
                && msg.contains("xylem status"),
            "{msg}"
        );
        // Every call of the client is bounded, those with a body too.
        let req = crate::EndpointRequest {
            ifname: "xyc0".into(),
            ip: "10.200.0.20".into(),
            mac: "02:00:00:00:00:14".into(),
            labels: Default::default(),
            container_id: Some("c1".into()),
            netns: None,
            cni_ifname: None,
        };
        assert!(matches!(
            c.put_endpoint("default", "a", &req),
            Err(Error::Timeout { .. })
        ));
        assert!(matches!(
            c.delete_endpoint("default", "a"),
            Err(Error::Timeout { .. })
        ));
        drop(listener);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn no_agent_is_unreachable_not_a_timeout() {
        let (path, listener) = silent_agent("gone");
        drop(listener);
        let _ = std::fs::remove_file(&path);
        let c = Client::new(&path).with_timeout(Duration::from_secs(5));
        assert!(matches!(c.endpoints(), Err(Error::AgentUnreachable { .. })));
    }

    #[test]
    fn a_pattern_goes_into_the_query_as_written() {
        assert_eq!(super::percent_encode("*.domain.com"), "*.domain.com");
        assert_eq!(super::percent_encode("a b&c=%"), "a%20b%26c%3D%25");
    }
}

/// Why [`Client::stream_lines`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The agent ended the stream (it is stopping).
    Ended,
    /// The caller's callback asked to stop.
    Stopped,
    /// Ctrl-C or SIGTERM.
    Interrupted,
}
