//! Redis fixtures: the machine's server (`$KEYGATE_TEST_REDIS`, default
//! `redis://127.0.0.1:6379`, which every machine of this project runs, CI's
//! included) with a key prefix of its own per test, deleted on drop; and a
//! `redis-server` of a test's own on a free port, to stop and restart.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keygate::config::RedisTarget;
use keygate::limits::resp::{Conn, Reply};

pub fn server_url() -> String {
    std::env::var("KEYGATE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// Runs one Redis command on a runtime of its own (works inside and
/// outside a test's runtime, and from `Drop`).
fn command(url: &str, args: Vec<Vec<u8>>) -> Result<Reply, String> {
    let target = RedisTarget::parse(url).map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let mut conn = Conn::connect(&target, Duration::from_secs(2))
                    .await
                    .map_err(|e| e.0)?;
                let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                let mut replies = conn.call(&[args]).await.map_err(|e| e.0)?;
                replies.pop().ok_or_else(|| "no reply".to_string())
            })
    })
    .join()
    .unwrap()
}

/// A key prefix on the shared server, for one test.
pub struct RedisPrefix {
    pub url: String,
    pub prefix: String,
}

impl RedisPrefix {
    /// Fails (never skips) when the server is not there.
    pub fn new() -> RedisPrefix {
        let url = server_url();
        if let Err(e) = command(&url, vec![b"PING".to_vec()]) {
            panic!(
                "these tests need Redis at {url} ({e}); start one, or point KEYGATE_TEST_REDIS=redis://host:port at another"
            );
        }
        let mut r = [0u8; 4];
        getrandom::fill(&mut r).unwrap();
        let prefix = format!(
            "keygate_test:{}:{:08x}",
            std::process::id(),
            u32::from_le_bytes(r)
        );
        RedisPrefix { url, prefix }
    }

    /// Keys under the prefix now.
    pub fn keys(&self) -> Vec<String> {
        match command(
            &self.url,
            vec![b"KEYS".to_vec(), format!("{}:*", self.prefix).into_bytes()],
        ) {
            Ok(Reply::Array(Some(items))) => items
                .into_iter()
                .filter_map(|r| match r {
                    Reply::Bulk(Some(b)) => String::from_utf8(b).ok(),
                    _ => None,
                })
                .collect(),
            other => panic!("KEYS: {other:?}"),
        }
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        for key in self.keys() {
            let _ = command(&self.url, vec![b"DEL".to_vec(), key.into_bytes()]);
        }
    }
}

/// A `redis-server` of this test's own on 127.0.0.1, no persistence.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start() -> OwnRedis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = OwnRedis { port, child: None };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and waits for PING.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): install it (Debian: apt-get install redis-server)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while command(&self.url(), vec![b"PING".to_vec()]).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server by its PID and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
