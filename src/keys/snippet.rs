//! Integration snippets: ready-to-paste code calling the API through the
//! gateway with a key, for the CLI (`keys snippet`) and the admin API. The
//! secret is never in them: server-side snippets read it from an environment
//! variable, the browser one holds a placeholder. Pure.

use super::{Access, KeyRecord};

/// The environment variable the server-side snippets read the key from.
pub const KEY_ENV: &str = "KEYGATE_API_KEY";

/// One snippet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Snippet {
    pub id: &'static str,
    pub title: &'static str,
    pub language: &'static str,
    pub code: String,
}

/// The snippets for one key: curl, Node.js, Python, and a browser `fetch()`
/// for a read-only key only (a full-access key must never be in a browser).
pub fn snippets(r: &KeyRecord, gateway_url: &str, header: &str) -> Vec<Snippet> {
    let url = gateway_url.trim_end_matches('/');
    let mut out = vec![
        Snippet {
            id: "curl",
            title: "curl",
            language: "shell",
            code: format!("curl -H \"{header}: ${KEY_ENV}\" {url}/"),
        },
        Snippet {
            id: "node",
            title: "Server side (Node.js 18+)",
            language: "javascript",
            code: format!(
                "const res = await fetch(\"{url}/\", {{\n  headers: {{ \"{header}\": process.env.{KEY_ENV} }},\n}});\nconsole.log(res.status, await res.json());"
            ),
        },
        Snippet {
            id: "python",
            title: "Server side (Python, requests)",
            language: "python",
            code: format!(
                "import os, requests\nres = requests.get(\"{url}/\", headers={{\"{header}\": os.environ[\"{KEY_ENV}\"]}})\nprint(res.status_code, res.json())"
            ),
        },
    ];
    if r.access == Access::ReadOnly {
        let mut code = String::new();
        if !r.origins.is_empty() {
            code.push_str(&format!("// Allowed only from: {}\n", r.origins.join(", ")));
        }
        code.push_str(&format!(
            "const API_KEY = \"<your read-only key>\"; // read-only keys may be public\nconst res = await fetch(\"{url}/\", {{ headers: {{ \"{header}\": API_KEY }} }});\nconst data = await res.json();"
        ));
        out.push(Snippet {
            id: "browser",
            title: "Browser (read-only keys only)",
            language: "javascript",
            code,
        });
    }
    out
}

/// The snippets as text, for a terminal.
pub fn render(r: &KeyRecord, gateway_url: &str, header: &str) -> String {
    let mut s = format!(
        "# Key {} ({:?}, {}). The secret is not shown: it was printed once, at creation.\n# Put it in ${KEY_ENV} where the code runs.\n",
        r.id, r.name, r.access
    );
    for snippet in snippets(r, gateway_url, header) {
        s.push_str(&format!("\n## {}\n{}\n", snippet.title, snippet.code));
    }
    if r.access == Access::FullAccess {
        s.push_str("\n# No browser snippet: a full-access key must never be used in a browser or an app;\n# the gateway refuses it there (403 browser_full_access). Create a read-only key for frontends.\n");
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
        let ids: Vec<&str> = snippets(&rec(Access::FullAccess), "http://x", "x-api-key")
            .iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, vec!["curl", "node", "python"]);
        let ids: Vec<&str> = snippets(&rec(Access::ReadOnly), "http://x", "x-api-key")
            .iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, vec!["curl", "node", "python", "browser"]);
    }

    #[test]
    fn snippets_hold_no_hash() {
        let text = render(&rec(Access::ReadOnly), "http://localhost:8080", "x-api-key");
        assert!(!text.contains(&KeyHash::of(b"kg_secret").to_hex()));
    }
}
