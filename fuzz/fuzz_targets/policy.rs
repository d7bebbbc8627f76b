//! The decision over arbitrary request heads: never a panic, and never an
//! allow unless the request carries exactly one known key.
#![no_main]

use std::sync::OnceLock;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use keygate::config::{BrowserFullAccess, CorsConfig};
use keygate::keys::{Access, KeyHash, KeyId, KeyIndex, KeyRecord, KeySet, StoreSnapshot};
use keygate::policy::{decide, Decision, PolicySettings, RequestHead};
use libfuzzer_sys::fuzz_target;

const KNOWN: &[(&str, Access)] = &[("known-ro", Access::ReadOnly), ("known-full", Access::FullAccess)];

fn index() -> &'static KeyIndex {
    static INDEX: OnceLock<KeyIndex> = OnceLock::new();
    INDEX.get_or_init(|| {
        let records = KNOWN
            .iter()
            .enumerate()
            .map(|(i, (secret, access))| KeyRecord {
                id: KeyId::parse(&format!("k{i}")).expect("valid id"),
                name: secret.to_string(),
                access: *access,
                hash: KeyHash::of(secret.as_bytes()),
                created: SystemTime::UNIX_EPOCH,
                expires: None,
                origins: if i == 0 { vec!["https://shop.example.com".into()] } else { vec![] },
                previous: None,
            })
            .collect();
        let keys = KeySet::from_records(records).expect("valid set");
        KeyIndex::build(&StoreSnapshot { keys, revoked: Default::default() })
    })
}

fuzz_target!(|data: &[u8]| {
    // First line: method; second: query; then "name: value" header lines.
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let method = Method::from_bytes(lines.next().unwrap_or("GET").as_bytes()).unwrap_or(Method::GET);
    let query = lines.next().filter(|q| !q.is_empty());
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.trim().as_bytes()), HeaderValue::from_str(value.trim())) {
                headers.append(n, v);
            }
        }
    }
    let header = HeaderName::from_static("x-api-key");
    let cors = CorsConfig { allowed_origins: vec!["https://shop.example.com".into()], max_age: std::time::Duration::from_secs(60) };
    for mode in [BrowserFullAccess::Deny, BrowserFullAccess::Report] {
        let settings = PolicySettings { header: &header, query_param: Some("api_key"), prefix: "kg", browser_full_access: mode, cors: Some(&cors) };
        let head = RequestHead { method: &method, headers: &headers, query };
        if let Decision::Allow { key, .. } = decide(head, index(), &settings, SystemTime::now()) {
            assert!(key.id() == "k0" || key.id() == "k1");
        }
    }
});
