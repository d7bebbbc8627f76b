//! `keygate keys delete`: irreversible; confirmed on a terminal.

use std::io::{IsTerminal, Write};

use super::{Target, find};
use crate::cli::CliError;

pub(super) fn delete(
    t: &Target,
    out: &mut impl Write,
    id: &str,
    yes: bool,
    json: bool,
) -> Result<(), CliError> {
    let record = find(t, id)?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::user(format!(
                "deleting {id} cannot be undone: pass --yes to confirm when not on a terminal"
            )));
        }
        eprint!(
            "Delete {} key {} ({:?})? It will never work again. [y/N] ",
            record.access, record.id, record.name
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err(CliError::user("not deleted"));
        }
    }
    let removed = t.store.delete(id)?;
    crate::cli::tokens::audit(
        &t.store.audit(),
        "key.delete",
        Some(id),
        serde_json::json!({"name": removed.name}),
    );
    if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"id": removed.id.as_str(), "name": removed.name, "deleted": true, "revoked": true})
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "Deleted key {} ({:?}); its hash is on the revocation list.",
        removed.id, removed.name
    )?;
    Ok(())
}
