//! A minimal HTTP/1.1 client over a Unix socket, for the API calls the benchmarks
//! time (spry's and Firecracker's API speak the same dialect). In-process, so a
//! timed call costs no `curl` start-up.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    /// The socket could not be reached or the exchange broke off.
    #[error("{method} {path} on {socket}: {source}")]
    Io {
        /// The socket.
        socket: PathBuf,
        /// The request method.
        method: String,
        /// The request path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The answer was not HTTP.
    #[error("{method} {path}: not an HTTP answer: {line:?}")]
    Malformed {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
        /// The status line read.
        line: String,
    },
    /// The socket never appeared.
    #[error("the API socket {0} did not appear within {1:?}")]
    NoSocket(PathBuf, Duration),
}

/// Waits until `socket` accepts connections.
pub fn wait_for_socket(socket: &Path, timeout: Duration) -> Result<(), ApiClientError> {
    let deadline = Instant::now() + timeout;
    while UnixStream::connect(socket).is_err() {
        if Instant::now() >= deadline {
            return Err(ApiClientError::NoSocket(socket.to_owned(), timeout));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// One request, one connection: (status, body).
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), ApiClientError> {
    let io = |source: std::io::Error| ApiClientError::Io {
        socket: socket.to_owned(),
        method: method.to_owned(),
        path: path.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(io)?;
    let status = parse_status(&line).ok_or_else(|| ApiClientError::Malformed {
        method: method.to_owned(),
        path: path.to_owned(),
        line: line.clone(),
    })?;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).map_err(io)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut answer = vec![0u8; length];
    reader.read_exact(&mut answer).map_err(io)?;
    Ok((status, String::from_utf8_lossy(&answer).into_owned()))
}

/// The status code of an HTTP/1.x status line.
fn parse_status(line: &str) -> Option<u16> {
    let mut words = line.split_whitespace();
    words.next().filter(|v| v.starts_with("HTTP/1."))?;
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_status_lines() {
        assert_eq!(parse_status("HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status("HTTP/1.0 400 Bad Request"), Some(400));
        assert_eq!(parse_status("SSH-2.0"), None);
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn test_call_reads_status_and_body() {
        let dir = std::env::temp_dir().join(format!("api-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nnope!")
                .unwrap();
            request
        });
        let (status, body) = call(&socket, "PUT", "/x", "{}").unwrap();
        let request = server.join().unwrap();
        assert_eq!((status, body.as_str()), (400, "nope!"));
        assert!(request.starts_with("PUT /x HTTP/1.1\r\n"), "{request}");
        assert!(request.ends_with("\r\n\r\n{}"), "{request}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
