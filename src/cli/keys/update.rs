//! `keygate keys update`: rename, change access (an upgrade needs --force).

use std::io::Write;

use super::Target;
use crate::cli::CliError;
use crate::keys::record::validate_name;
use crate::keys::{Access, KeyUpdate};

pub(super) fn update(
    t: &Target,
    out: &mut impl Write,
    id: &str,
    name: Option<String>,
    access: Option<Access>,
    force: bool,
) -> Result<(), CliError> {
    if name.is_none() && access.is_none() {
        return Err(CliError::usage(
            "keys update: nothing to change: pass --name and/or --access",
        ));
    }
    if let Some(n) = &name {
        validate_name(n).map_err(CliError::user)?;
    }
    let record = t.store.modify_keys(&[id], |keys, _| {
        Ok(keys.update(id, KeyUpdate { name, access }, force)?.clone())
    })?;
    writeln!(
        out,
        "Updated key {}: {:?}, {}.",
        record.id, record.name, record.access
    )?;
    Ok(())
}
