//! Integration snippets: ready-to-paste code calling the API through the
//! gateway with a key. The secret is never printed: snippets read it from an
//! environment variable (server side) or hold a placeholder (browser).

use std::fmt::Write;

use crate::config::Config;
use crate::keys::{Access, KeyRecord};

/// The environment variable the server-side snippets read the key from.
pub const KEY_ENV: &str = "KEYGATE_API_KEY";

/// `http(s)://host:port` of the gateway from its listen address; a wildcard
/// address becomes `localhost`.
pub fn default_gateway_url(config: Option<&Config>) -> String {
    let Some(c) = config else {
        return "http://localhost:8080".to_string();
    };
    let scheme = if c.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let addr = c.server.listen;
    let host = if addr.ip().is_unspecified() {
        "localhost".to_string()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    format!("{scheme}://{host}:{}", addr.port())
}

/// Renders the snippets for one key.
pub fn render(r: &KeyRecord, gateway_url: &str, header: &str) -> String {
    let url = gateway_url.trim_end_matches('/');
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        s,
        "# Key {} ({:?}, {}). The secret is not shown: it was printed once, at creation.",
        r.id, r.name, r.access
    );
    let _ = writeln!(s, "# Put it in ${KEY_ENV} where the code runs.\n");
    let _ = writeln!(s, "## curl");
    let _ = writeln!(s, "curl -H \"{header}: ${KEY_ENV}\" {url}/\n");
    let _ = writeln!(s, "## Server side (Node.js 18+)");
    let _ = writeln!(s, "const res = await fetch(\"{url}/\", {{");
    let _ = writeln!(s, "  headers: {{ \"{header}\": process.env.{KEY_ENV} }},");
    let _ = writeln!(s, "}});");
    let _ = writeln!(s, "console.log(res.status, await res.json());\n");
    let _ = writeln!(s, "## Server side (Python, requests)");
    let _ = writeln!(s, "import os, requests");
    let _ = writeln!(
        s,
        "res = requests.get(\"{url}/\", headers={{\"{header}\": os.environ[\"{KEY_ENV}\"]}})"
    );
    let _ = writeln!(s, "print(res.status_code, res.json())");
    match r.access {
        Access::ReadOnly => {
            let _ = writeln!(s, "\n## Browser (read-only keys only)");
            if !r.origins.is_empty() {
                let _ = writeln!(s, "// Allowed only from: {}", r.origins.join(", "));
            }
            let _ = writeln!(
                s,
                "const API_KEY = \"<your read-only key>\"; // read-only keys may be public"
            );
            let _ = writeln!(
                s,
                "const res = await fetch(\"{url}/\", {{ headers: {{ \"{header}\": API_KEY }} }});"
            );
            let _ = writeln!(s, "const data = await res.json();");
        }
        Access::FullAccess => {
            let _ = writeln!(
                s,
                "\n# No browser snippet: a full-access key must never be used in a browser or an app;"
            );
            let _ = writeln!(
                s,
                "# the gateway refuses it there (403 browser_full_access). Create a read-only key for frontends."
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyHash, KeyId};
    use std::time::UNIX_EPOCH;

    fn rec(access: Access) -> KeyRecord {
        KeyRecord {
            id: KeyId::parse("key_a").unwrap_or_else(|e| panic!("{e}")),
            name: "Shop".into(),
            access,
            hash: KeyHash::of(b"kg_secret"),
            created: UNIX_EPOCH,
            expires: None,
            origins: vec![],
            previous: None,
            rate_limit: None,
        }
    }

    #[test]
    fn read_only_gets_a_browser_snippet_and_full_access_does_not() {
        let ro = render(
            &rec(Access::ReadOnly),
            "https://api.example.com/",
            "x-api-key",
        );
        assert!(ro.contains("curl -H \"x-api-key: $KEYGATE_API_KEY\" https://api.example.com/"));
        assert!(ro.contains("## Browser"));
        let full = render(
            &rec(Access::FullAccess),
            "https://api.example.com",
            "x-api-key",
        );
        assert!(!full.contains("## Browser"));
        assert!(full.contains("never be used in a browser"));
    }

    #[test]
    fn snippets_hold_no_hash() {
        let text = render(&rec(Access::ReadOnly), "http://localhost:8080", "x-api-key");
        assert!(!text.contains(&KeyHash::of(b"kg_secret").to_hex()));
    }
}
