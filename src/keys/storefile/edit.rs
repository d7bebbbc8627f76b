//! Writing the store over its current text, so that what an operator wrote
//! by hand survives a CLI write: comments, blank lines, the order of keys
//! and of their fields, and the formatting of every key the command did not
//! touch. Only what changed is changed: a new key's table is appended, a
//! deleted key's table goes (with the comments above it), a changed field
//! gets its new value in place.
//!
//! The result is checked by reading it back: if it does not hold exactly
//! the new keys (a hand edit this does not foresee), `None` says to write
//! the store whole, as before.

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, Value};

use super::{parse_store, render_store};

/// Stores up to this size (about 80,000 keys) are edited in place.
const MAX_EDIT_BYTES: usize = 16 * 1024 * 1024;
use crate::keys::KeySet;

/// `old` (the store as it is on disk) edited to hold `set`, or `None`.
pub fn over(old: &str, set: &KeySet) -> Option<String> {
    let rendered = render_store(set).ok()?;
    // A store this big is a machine's (an import, a migration), and a
    // document tree of it would cost seconds and hundreds of MB.
    if old.len().max(rendered.len()) > MAX_EDIT_BYTES {
        return None;
    }
    let mut doc: DocumentMut = old.parse().ok()?;
    let fresh: DocumentMut = rendered.parse().ok()?;
    let empty = ArrayOfTables::new();
    let wanted = fresh
        .get("keys")
        .and_then(Item::as_array_of_tables)
        .unwrap_or(&empty);
    let current = match doc.get("keys") {
        Some(item) => item.as_array_of_tables()?.clone(),
        None => ArrayOfTables::new(),
    };
    let by_id: std::collections::HashMap<&str, &Table> = current
        .iter()
        .filter_map(|t| Some((t.get("id").and_then(Item::as_str)?, t)))
        .collect();
    let mut next = ArrayOfTables::new();
    for table in wanted.iter() {
        let id = table.get("id").and_then(Item::as_str)?;
        let edited = match by_id.get(id) {
            Some(old) => edit_table((*old).clone(), table),
            None => table.clone(),
        };
        next.push(edited);
    }
    if next.is_empty() {
        // An empty store has no table to keep; the layout `keys` writes.
        return None;
    }
    doc.insert("keys", Item::ArrayOfTables(next));
    let text = doc.to_string();
    // What writing it whole would store (times to the second, as written).
    let whole = parse_store(&fresh.to_string()).ok()?;
    let back = parse_store(&text).ok()?;
    (back.records() == whole.records()).then_some(text)
}

/// `old` with the values of `new`: changed values replaced in place (their
/// spacing and trailing comment kept), new fields appended, gone ones
/// removed.
fn edit_table(mut old: Table, new: &Table) -> Table {
    let gone: Vec<String> = old
        .iter()
        .map(|(k, _)| k.to_string())
        .filter(|k| !new.contains_key(k))
        .collect();
    for k in gone {
        old.remove(&k);
    }
    for (key, item) in new.iter() {
        let Some(value) = item.as_value() else {
            old.insert(key, item.clone());
            continue;
        };
        match old.get_mut(key).and_then(Item::as_value_mut) {
            Some(current) if same(key, current, value) => {}
            Some(current) => {
                let decor = current.decor().clone();
                *current = value.clone();
                *current.decor_mut() = decor;
            }
            None => {
                old.insert(key, item.clone());
            }
        }
    }
    old
}

/// The same value, whatever its spacing and comments, and whatever way
/// of writing it the store accepts (a date for midnight, an origin with
/// its default port): an operator's spelling is kept.
fn same(key: &str, a: &Value, b: &Value) -> bool {
    use crate::keys::record::{normalize_origin, parse_time};
    let bare = |v: &Value| {
        let mut v = v.clone();
        v.decor_mut().clear();
        v.to_string()
    };
    if bare(a) == bare(b) {
        return true;
    }
    match (key, a, b) {
        ("created" | "expires" | "rotating_until", Value::String(x), Value::String(y)) => {
            matches!((parse_time(x.value()), parse_time(y.value())), (Ok(p), Ok(q)) if p == q)
        }
        ("origins", Value::Array(x), Value::Array(y)) => {
            let norm = |arr: &toml_edit::Array| -> Option<Vec<String>> {
                arr.iter()
                    .map(|v| v.as_str().and_then(|s| normalize_origin(s).ok()))
                    .collect()
            };
            norm(x).is_some() && norm(x) == norm(y)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::storefile::parse_store;

    const HAND: &str = r#"# Our loyalty keys. Ask Ana before deleting any.

# The shop's storefront.
[[keys]]
id = "shop_front"
name = "Boutique"       # renamed in 2026
access = "read-only"
hash = "0000000000000000000000000000000000000000000000000000000000000001"
created = "2026-11-01T10:00:00Z"

# ERP: full access, server side only!
[[keys]]
access   = "full-access"
id = "erp"
name = "ERP"
hash = "0000000000000000000000000000000000000000000000000000000000000002"
created = "2026-11-01"
"#;

    #[test]
    fn a_rename_changes_one_value_and_nothing_else() {
        let mut set = parse_store(HAND).unwrap_or_else(|e| panic!("{e}"));
        set.update(
            "shop_front",
            crate::keys::KeyUpdate {
                name: Some("Boutique Paris".into()),
                ..Default::default()
            },
            false,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let text = over(HAND, &set).unwrap_or_else(|| panic!("not edited in place"));
        assert_eq!(
            text,
            HAND.replace(
                "name = \"Boutique\"       # renamed in 2026",
                "name = \"Boutique Paris\"       # renamed in 2026"
            )
        );
    }

    #[test]
    fn a_deleted_key_takes_its_comment_and_a_new_one_is_appended() {
        let mut set = parse_store(HAND).unwrap_or_else(|e| panic!("{e}"));
        set.remove("erp").unwrap_or_else(|e| panic!("{e}"));
        let text = over(HAND, &set).unwrap_or_else(|| panic!("not edited in place"));
        assert!(!text.contains("ERP"), "{text}");
        assert!(text.starts_with("# Our loyalty keys. Ask Ana before deleting any.\n\n# The shop's storefront.\n[[keys]]\nid = \"shop_front\"\nname = \"Boutique\"       # renamed in 2026\n"), "{text}");
    }

    #[test]
    fn untouched_keys_keep_their_field_order_and_spacing() {
        let set = parse_store(HAND).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(over(HAND, &set).as_deref(), Some(HAND));
    }
}
