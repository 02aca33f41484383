//! Checks the body of `POST /v1/cluster/members` field by field, so a bad
//! body answers 400 naming the field at fault rather than a serde message.

use crate::config::check_rest_url;
use eddy_sdk::rest::AddMemberRequest;
use eddy_sdk::{ApiError, ErrorCode};
use serde_json::Value;

const FIELDS: [&str; 3] = ["id", "raft_addr", "rest_url"];

fn bad(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message).with_field(field)
}

/// Parses and validates `{id, raft_addr, rest_url}`.
pub fn parse_member(body: &[u8]) -> Result<AddMemberRequest, ApiError> {
    let shape = "the body must be JSON: {\"id\": 2, \"raft_addr\": \"host:port\", \"rest_url\": \"http://host:port\"}";
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(ErrorCode::BadRequest, shape));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(map) = value else {
        return Err(ApiError::new(ErrorCode::BadRequest, shape));
    };
    if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(bad(
            unknown,
            format!("unknown field {unknown:?}; expected id, raft_addr, rest_url"),
        ));
    }
    let id = match map.get("id") {
        None => return Err(bad("id", "id is missing")),
        Some(v) => v
            .as_u64()
            .filter(|id| *id != 0)
            .ok_or_else(|| bad("id", format!("id must be a positive integer, not {v}")))?,
    };
    let text = |field: &str| -> Result<String, ApiError> {
        match map.get(field) {
            None => Err(bad(field, format!("{field} is missing"))),
            Some(Value::String(s)) => Ok(s.trim().to_string()),
            Some(v) => Err(bad(field, format!("{field} must be a string, not {v}"))),
        }
    };
    let raft_addr = text("raft_addr")?;
    check_addr(&raft_addr)
        .map_err(|reason| bad("raft_addr", format!("raft_addr {raft_addr:?} {reason}")))?;
    let rest_url = text("rest_url")?;
    check_rest_url(&rest_url)
        .map_err(|reason| bad("rest_url", format!("rest_url {rest_url:?} {reason}")))?;
    Ok(AddMemberRequest {
        id,
        raft_addr,
        rest_url: rest_url.trim_end_matches('/').to_string(),
    })
}

/// A reachable `host:port`: a host and a non-zero port.
fn check_addr(addr: &str) -> Result<(), &'static str> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or("must be host:port (the member's rpc-addr)")?;
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err("must be host:port with a host name or IP");
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err("must end in a port from 1 to 65535"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> Option<String> {
        parse_member(body.as_bytes()).unwrap_err().field
    }

    #[test]
    fn parse_member_accepts_a_full_body() {
        let m = parse_member(
            br#"{"id": 2, "raft_addr": "10.0.0.2:6123", "rest_url": "http://10.0.0.2:8081/"}"#,
        )
        .unwrap();
        assert_eq!(m.id, 2);
        assert_eq!(m.raft_addr, "10.0.0.2:6123");
        assert_eq!(m.rest_url, "http://10.0.0.2:8081");
    }

    /// Every bad body names its field; unparseable ones are bad_request.
    #[test]
    fn parse_member_bad_fields_are_named() {
        let ok_rest = r#""rest_url": "http://h:1""#;
        let ok_raft = r#""raft_addr": "h:1""#;
        assert_eq!(
            field_of(&format!("{{{ok_raft}, {ok_rest}}}")).as_deref(),
            Some("id")
        );
        assert_eq!(
            field_of(&format!(r#"{{"id": 0, {ok_raft}, {ok_rest}}}"#)).as_deref(),
            Some("id")
        );
        assert_eq!(
            field_of(&format!(r#"{{"id": "2", {ok_raft}, {ok_rest}}}"#)).as_deref(),
            Some("id")
        );
        for addr in ["h", "h:0", ":1", "h:x", "h:70000"] {
            let body = format!(r#"{{"id": 2, "raft_addr": "{addr}", {ok_rest}}}"#);
            assert_eq!(field_of(&body).as_deref(), Some("raft_addr"), "{addr}");
        }
        for url in ["h:1", "ftp://h", "http://", "http://h/v1"] {
            let body = format!(r#"{{"id": 2, {ok_raft}, "rest_url": "{url}"}}"#);
            assert_eq!(field_of(&body).as_deref(), Some("rest_url"), "{url}");
        }
        let extra = format!(r#"{{"id": 2, {ok_raft}, {ok_rest}, "voter": true}}"#);
        assert_eq!(field_of(&extra).as_deref(), Some("voter"));
        for body in ["", "{", "[1]", "null"] {
            let e = parse_member(body.as_bytes()).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert_eq!(e.field, None, "{body}");
        }
    }
}
