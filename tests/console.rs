//! The console in a real browser (headless Chromium through chromedriver):
//! the vendor's page workflow as a user does it, found by the controls'
//! visible names. `KEYGATE_UPDATE_SCREENSHOT=1 cargo test --test console`
//! also refreshes `docs/console.png`, the README's picture.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::webdriver::Browser;
use support::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

const DIALOG: &str = "//dialog[@open]";

fn start(upstream: &str) -> (TestGateway, SocketAddr, String) {
    let gw = TestGateway::start_with(
        upstream,
        Setup {
            tables:
                "[admin]\nlisten = \"127.0.0.1:0\"\ndocs_url = \"https://docs.example.com/api\"\n"
                    .into(),
            ..Setup::default()
        },
    );
    let addr = gw.admin_addr();
    let token = gw.admin_token("alice", "admin");
    (gw, addr, token)
}

async fn until_status(gw: &TestGateway, secret: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&gw.url("/"), &[("x-api-key", secret)]).await.status != status {
        assert!(Instant::now() < deadline, "never {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates a key through the page; returns the secret it showed.
async fn create_key(b: &Browser, name: &str, access: &str) -> String {
    b.click(&b.button("New key").await).await;
    let name_field = b.field(DIALOG, "Name").await;
    b.type_text(&name_field, name).await;
    // "Read Only" is preselected.
    let read_only = b.field(DIALOG, "Read Only").await;
    assert_eq!(b.property(&read_only, "checked").await, true);
    if access == "Full Access" {
        b.click(&b.field(DIALOG, "Full Access").await).await;
    }
    assert!(b.shows("Never use it in a frontend").await);
    b.click(&b.button("Create").await).await;
    let secret_field = b.field("//main", "API key").await;
    let secret = b.property(&secret_field, "value").await;
    let secret = secret.as_str().unwrap().to_string();
    assert!(secret.starts_with("kg_"), "{secret}");
    assert!(b.shows("shown only this once").await);
    assert!(!b.button("Copy").await.is_empty());
    secret
}

#[tokio::test(flavor = "multi_thread")]
async fn the_vendors_page_workflow_in_a_browser() {
    let upstream = TestUpstream::start().await;
    let (gw, admin, token) = start(&upstream.url());
    let b = Browser::start().await;
    let page = format!("http://{admin}/");

    // Sign in.
    b.goto(&page).await;
    let token_field = b.field("//main", "Admin token").await;
    b.type_text(&token_field, "kga_not_a_token").await;
    b.click(&b.button("Sign in").await).await;
    b.wait_shows("not a valid admin token", true).await;
    b.clear(&token_field).await;
    b.type_text(&token_field, &token).await;
    b.click(&b.button("Sign in").await).await;
    b.wait_shows("alice (admin)", true).await;
    assert!(b.shows("API Keys").await);
    let docs = b
        .visible("//a[normalize-space()='API documentation']")
        .await;
    assert_eq!(
        b.property(&docs, "href").await,
        "https://docs.example.com/api"
    );
    b.visible("//a[@href='/admin/docs']").await;

    // A read-only key: the secret works through the gateway, and is gone
    // after a reload of the page.
    let front = create_key(&b, "Boutique frontend", "Read Only").await;
    until_status(&gw, &front, 200).await;
    b.refresh().await;
    b.wait_shows("Boutique frontend", true).await;
    assert!(!b.shows(&front).await);
    let html = b.visible("//body").await;
    assert!(!b.text(&html).await.contains(&front));

    // A full-access key.
    let erp = create_key(&b, "ERP backend", "Full Access").await;
    until_status(&gw, &erp, 200).await;
    b.click(&b.button("Done").await).await;
    b.wait_shows("ERP backend", true).await;

    // Its snippets: no browser one for a full-access key.
    b.click(&b.button("ERP backend").await).await;
    b.wait_shows("Integration Snippets", true).await;
    // The heading can show before the snippets under it: wait for them.
    b.wait_shows("Server side (Python, requests)", true).await;
    assert!(!b.shows("Browser (read-only keys only)").await);

    // Rename and downgrade it: no confirmation for a downgrade.
    let name = b.field("//main", "Name").await;
    b.clear(&name).await;
    b.type_text(&name, "ERP (read)").await;
    b.click(&b.field("//main", "Read Only").await).await;
    b.click(&b.button("Update").await).await;
    b.wait_shows("Updated “ERP (read)”: Read Only.", true).await;
    // The gateway refuses its writes from its next reload on.
    let deadline = Instant::now() + Duration::from_secs(5);
    while send("POST", &gw.url("/"), &[("x-api-key", &erp)], "x")
        .await
        .status
        != 403
    {
        assert!(
            Instant::now() < deadline,
            "the downgrade never reached the gateway"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // An upgrade asks first; cancelled, it stays read-only.
    b.click(&b.field("//main", "Full Access").await).await;
    b.click(&b.button("Update").await).await;
    b.wait_shows("Upgrade to Full Access?", true).await;
    assert!(b.shows("may already be in a frontend").await);
    b.click(&b.button("Cancel").await).await;
    b.wait_shows("Not upgraded", true).await;
    until_status(&gw, &erp, 200).await;
    assert_eq!(
        send("POST", &gw.url("/"), &[("x-api-key", &erp)], "x")
            .await
            .status,
        403
    );

    // Read-only now: a browser snippet, with the secret as a placeholder.
    b.wait_shows("Browser (read-only keys only)", true).await;
    assert!(b.shows("<your read-only key>").await);
    assert!(!b.shows(&erp).await);

    // Rotate: a new secret, shown once; both work during the grace.
    b.click(&b.button("Rotate").await).await;
    b.click(&b.button("Rotate key").await).await;
    let rotated = b.field("//main", "API key").await;
    let rotated = b.property(&rotated, "value").await;
    let rotated = rotated.as_str().unwrap().to_string();
    assert_ne!(rotated, erp);
    until_status(&gw, &rotated, 200).await;
    assert_eq!(get(&gw.url("/"), &[("x-api-key", &erp)]).await.status, 200);
    b.click(&b.button("Done").await).await;

    // Delete, after a confirmation that says it is irreversible and when
    // the key was last used.
    b.click(&b.button("ERP (read)").await).await;
    b.click(&b.button("Delete").await).await;
    b.wait_shows("irreversible", true).await;
    b.wait_shows("It was last used", true).await;
    if std::env::var_os("KEYGATE_UPDATE_SCREENSHOT").is_some() {
        b.click(&b.button("Cancel").await).await;
        b.click(&b.button("← All keys").await).await;
        b.wait_shows("Boutique frontend", true).await;
        let png = b.screenshot().await;
        assert!(png.starts_with(b"\x89PNG"));
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console.png");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, png).unwrap();
        b.click(&b.button("ERP (read)").await).await;
        b.click(&b.button("Delete").await).await;
    }
    b.click(&b.button("Delete key").await).await;
    b.wait_shows("Deleted “ERP (read)”", true).await;
    assert!(!b.shows("ERP (read)").await || b.shows("Deleted “ERP (read)”").await);
    until_status(&gw, &rotated, 401).await;
    assert_eq!(get(&gw.url("/"), &[("x-api-key", &erp)]).await.status, 401);

    // The audit trail names who did it.
    b.click(&b.button("Audit trail").await).await;
    b.wait_shows("key.delete", true).await;
    assert!(b.shows("key.rotate").await && b.shows("key.create").await);

    // Sign out.
    b.click(&b.button("Sign out").await).await;
    b.field("//main", "Admin token").await;
    b.refresh().await;
    b.field("//main", "Admin token").await;
    assert!(!b.shows("Boutique frontend").await);
}
