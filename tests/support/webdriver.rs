//! A real browser for UI tests: Debian's `chromium`, driven through
//! `chromedriver` (the W3C WebDriver protocol: JSON over HTTP, a handful of
//! calls, spoken here with the hyper client the tests already use). Both
//! are started on this machine (headless, loopback) and stopped on drop.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::client::Reply;

/// Every WebDriver call is bounded: a hung driver fails the test, not CI.
async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<bytes::Bytes>,
) -> Reply {
    tokio::time::timeout(
        Duration::from_secs(30),
        super::client::send(method, url, headers, body),
    )
    .await
    .unwrap_or_else(|_| panic!("WebDriver {method} {url}: no answer within 30 s"))
}
use super::gateway::Process;

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    _driver: Process,
    base: String,
    session: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session. Fails (never
    /// skips) when either is missing, saying how to install them.
    pub async fn start() -> Browser {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("the console test needs Chromium: apt-get install chromium chromium-driver (.ci/run does)")
            });
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run chromedriver ({e}): apt-get install chromium-driver (.ci/run does)"
                )
            });
        let driver = Process(driver);
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = tokio::time::timeout(
                Duration::from_secs(2),
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>()
                    .get(format!("{base}/status").parse().unwrap()),
            )
            .await;
            if matches!(up, Ok(Ok(r)) if r.status() == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", "--no-first-run", "--disable-extensions"]
            }
        }}});
        let r = send(
            "POST",
            &format!("{base}/session"),
            &[("content-type", "application/json")],
            caps.to_string(),
        )
        .await;
        let v: Value = r.json();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        Browser {
            _driver: driver,
            base,
            session,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let r = send(
            method,
            &url,
            &[("content-type", "application/json")],
            body.map(|b| b.to_string()).unwrap_or_default(),
        )
        .await;
        let v: Value = r.json();
        if !r.status.is_success() {
            panic!("WebDriver {method} {path}: {v}");
        }
        v["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url}))).await;
    }

    /// A visible button (or link) by its visible name.
    pub async fn button(&self, name: &str) -> String {
        self.visible(&format!(
            "//*[(self::button or self::a) and normalize-space()='{name}']"
        ))
        .await
    }

    /// The form control labelled `label` inside the element matching `within`.
    pub async fn field(&self, within: &str, label: &str) -> String {
        self.visible(&format!(
            "{within}//input[@id=(//label[normalize-space()='{label}']/@for)] | {within}//label[normalize-space()='{label}']/input"
        ))
        .await
    }

    /// Every element matching an XPath, now.
    async fn elements(&self, xpath: &str) -> Vec<String> {
        let url = format!("{}/session/{}/elements", self.base, self.session);
        let r = send(
            "POST",
            &url,
            &[("content-type", "application/json")],
            json!({"using": "xpath", "value": xpath}).to_string(),
        )
        .await;
        if !r.status.is_success() {
            return Vec::new();
        }
        r.json()["value"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The first displayed element matching an XPath, waiting up to 5 s.
    pub async fn visible(&self, xpath: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for id in self.elements(xpath).await {
                if self.displayed(&id).await {
                    return id;
                }
            }
            assert!(Instant::now() < deadline, "nothing visible at {xpath}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn displayed(&self, element: &str) -> bool {
        self.call("GET", &format!("/element/{element}/displayed"), None)
            .await
            .as_bool()
            .unwrap_or(false)
    }

    /// True when some displayed element has this visible text somewhere.
    pub async fn shows(&self, text: &str) -> bool {
        let xpath = format!("//*[contains(normalize-space(), \"{text}\")]");
        let url = format!("{}/session/{}/elements", self.base, self.session);
        let r = send(
            "POST",
            &url,
            &[("content-type", "application/json")],
            json!({"using": "xpath", "value": xpath}).to_string(),
        )
        .await;
        for e in r.json()["value"].as_array().cloned().unwrap_or_default() {
            if self
                .displayed(e[ELEMENT].as_str().unwrap_or_default())
                .await
            {
                return true;
            }
        }
        false
    }

    /// Waits until `shows(text)` is `wanted`.
    pub async fn wait_shows(&self, text: &str, wanted: bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.shows(text).await != wanted {
            assert!(
                Instant::now() < deadline,
                "{text:?} {} on the page",
                if wanted { "never showed" } else { "stayed" }
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn click(&self, element: &str) {
        self.call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn clear(&self, element: &str) {
        self.call(
            "POST",
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn type_text(&self, element: &str, text: &str) {
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    pub async fn text(&self, element: &str) -> String {
        self.call("GET", &format!("/element/{element}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn property(&self, element: &str, name: &str) -> Value {
        self.call("GET", &format!("/element/{element}/property/{name}"), None)
            .await
    }

    pub async fn refresh(&self) {
        self.call("POST", "/refresh", Some(json!({}))).await;
    }

    /// A PNG of the page.
    pub async fn screenshot(&self) -> Vec<u8> {
        let b64 = self.call("GET", "/screenshot", None).await;
        decode_base64(b64.as_str().unwrap_or_default())
    }
}

impl Drop for Browser {
    /// Ends the session (Chromium exits) before the driver is killed, on a
    /// runtime of its own: drop may run inside or outside a test's runtime.
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), send("DELETE", &url, &[], ""))
                    .await;
            });
        })
        .join();
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    let table = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let Some(v) = table(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
