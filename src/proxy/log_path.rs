//! `LogPath`: a request path as log lines carry it, cut to a fixed length.
//! A client chooses its path (up to `server.max_header_bytes`), so a path
//! copied whole into every denial line would let it decide how much memory
//! the log queue holds and how much an operator's log shipper must carry.

use std::fmt;

/// The longest path a log line carries, in bytes.
pub const MAX_PATH_BYTES: usize = 256;

/// Displays at most `MAX_PATH_BYTES` of a path, then `...[cut: N bytes]`.
#[derive(Debug, Clone, Copy)]
pub struct LogPath<'a>(pub &'a str);

impl fmt::Display for LogPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.0;
        if path.len() <= MAX_PATH_BYTES {
            return f.write_str(path);
        }
        // Request paths are ASCII (hyper refuses other bytes), but cut on a
        // character boundary all the same.
        let mut end = MAX_PATH_BYTES;
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{}...[cut: {} bytes]", &path[..end], path.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_paths_are_whole_and_long_ones_cut_with_their_length() {
        assert_eq!(LogPath("/v1/points").to_string(), "/v1/points");
        let exact = format!("/{}", "a".repeat(MAX_PATH_BYTES - 1));
        assert_eq!(LogPath(&exact).to_string(), exact);
        let long = format!("/{}", "b".repeat(16 * 1024));
        let shown = LogPath(&long).to_string();
        assert!(shown.starts_with(&long[..MAX_PATH_BYTES]));
        assert!(shown.ends_with("...[cut: 16385 bytes]"), "{shown}");
        assert!(shown.len() < MAX_PATH_BYTES + 32);
        let wide = "é".repeat(MAX_PATH_BYTES);
        assert!(LogPath(&wide).to_string().contains("[cut:"));
    }
}
