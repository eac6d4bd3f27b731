//! `vpc-sim ec2`: one EC2 Query API call from the command line, for scripts and debugging, for
//! example inside a User-mode Linux guest where a shell script drives the simulator. The
//! simulator checks that a request carries a SigV4 Authorization header but not what it signs,
//! so this client sends the header's shape with a dummy signature; it is for the simulator only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ec2::query::API_VERSION;
use super::info::SimInfo;

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("endpoint {0:?} is not http://HOST:PORT")]
    Endpoint(String),
    #[error("parameter {0:?} is not KEY=VALUE")]
    Param(String),
    #[error("read {0}: {1}")]
    SimJson(PathBuf, String),
    #[error("call {endpoint}: {source}")]
    Io {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{action} failed (HTTP {status}): {code}: {message}")]
    Ec2 {
        action: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("malformed HTTP answer from {0}")]
    Answer(String),
    #[error("no element <{0}> in the answer:\n{1}")]
    Missing(String, String),
}

/// `KEY=VALUE` as given on the command line.
pub fn parse_param(raw: &str) -> Result<(String, String), ClientError> {
    raw.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| ClientError::Param(raw.to_string()))
}

/// The root-namespace EC2 endpoint a running simulator wrote into its sim.json.
pub fn endpoint_from_sim_json(path: &Path) -> Result<String, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::SimJson(path.to_path_buf(), e.to_string()))?;
    let info: SimInfo = serde_json::from_str(&text)
        .map_err(|e| ClientError::SimJson(path.to_path_buf(), e.to_string()))?;
    Ok(info.ec2_endpoint)
}

/// Sends `action` with `params` and returns the XML answer; an EC2 error becomes `Ec2`.
pub fn call(
    endpoint: &str,
    action: &str,
    params: &[(String, String)],
) -> Result<String, ClientError> {
    let host = endpoint
        .strip_prefix("http://")
        .map(|h| h.trim_end_matches('/'))
        .filter(|h| h.contains(':') && !h.contains('/'))
        .ok_or_else(|| ClientError::Endpoint(endpoint.to_string()))?;
    let body = form_body(action, params);
    let io = |source| ClientError::Io {
        endpoint: endpoint.to_string(),
        source,
    };
    let mut stream = TcpStream::connect(host).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=vpcsim/20000101/us-west-2/ec2/aws4_request, \
         SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(io)?;
    let (status, xml) = split_answer(&String::from_utf8_lossy(&answer))
        .ok_or_else(|| ClientError::Answer(endpoint.to_string()))?;
    if !(200..300).contains(&status) {
        return Err(ClientError::Ec2 {
            action: action.to_string(),
            status,
            code: first_text(&xml, "Code").unwrap_or_default(),
            message: first_text(&xml, "Message").unwrap_or_default(),
        });
    }
    Ok(xml)
}

fn form_body(action: &str, params: &[(String, String)]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", action);
    form.append_pair("Version", API_VERSION);
    for (k, v) in params {
        form.append_pair(k, v);
    }
    form.finish()
}

/// The status code and body of an HTTP/1.1 answer, chunked or not.
fn split_answer(raw: &str) -> Option<(u16, String)> {
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Some((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The text of the first `<element>` in `xml`, unescaped; the simulator's answers put values
/// in leaf elements, so this is all a script needs.
pub fn first_text(xml: &str, element: &str) -> Option<String> {
    let open = format!("<{element}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{element}>"))?;
    let text = &xml[start..end];
    if text.contains('<') {
        return None;
    }
    Some(
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// The first text of each element in `elements`, or an error naming the missing one.
pub fn pick(xml: &str, elements: &[String]) -> Result<Vec<String>, ClientError> {
    elements
        .iter()
        .map(|e| first_text(xml, e).ok_or_else(|| ClientError::Missing(e.clone(), xml.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(answer: String) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = vec![0u8; 4096];
            let n = stream.read(&mut request).unwrap();
            stream.write_all(answer.as_bytes()).unwrap();
            String::from_utf8_lossy(&request[..n]).into_owned()
        });
        (endpoint, server)
    }

    #[test]
    fn sends_a_signed_looking_form_and_reads_the_answer() {
        let body = "<R><interfaceAssociation><vlanId>5</vlanId></interfaceAssociation></R>";
        let (endpoint, server) = serve_once(format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ));
        let params = [parse_param("VlanId=5").unwrap()];
        let xml = call(&endpoint, "AssociateTrunkInterface", &params).unwrap();
        assert_eq!(first_text(&xml, "vlanId").as_deref(), Some("5"));
        let request = server.join().unwrap();
        assert!(request.contains("Authorization: AWS4-HMAC-SHA256 "));
        assert!(request.ends_with("Action=AssociateTrunkInterface&Version=2016-11-15&VlanId=5"));
    }

    #[test]
    fn ec2_errors_carry_code_and_message() {
        let body = "<Response><Errors><Error><Code>InvalidVlanId.Duplicate</Code>\
                    <Message>VlanId &apos;5&apos; is in use</Message></Error></Errors></Response>";
        let (endpoint, server) = serve_once(format!(
            "HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        ));
        let err = call(&endpoint, "AssociateTrunkInterface", &[]).unwrap_err();
        server.join().unwrap();
        match err {
            ClientError::Ec2 {
                status,
                code,
                message,
                ..
            } => {
                assert_eq!((status, code.as_str()), (400, "InvalidVlanId.Duplicate"));
                assert_eq!(message, "VlanId '5' is in use");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_params_and_picks_elements() {
        assert_eq!(
            parse_param("SecurityGroupId.1=sg-db").unwrap(),
            ("SecurityGroupId.1".to_string(), "sg-db".to_string())
        );
        assert!(parse_param("=x").is_err() && parse_param("novalue").is_err());
        let xml = "<a><id>eni-1</id><mac>02:00</mac><set><id>eni-2</id></set></a>";
        let got = pick(xml, &["id".to_string(), "mac".to_string()]).unwrap();
        assert_eq!(got, ["eni-1", "02:00"]);
        assert!(pick(xml, &["set".to_string()]).is_err());
        assert!(call("127.0.0.1:1", "X", &[]).is_err());
    }
}
