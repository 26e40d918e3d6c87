//! What the commands that import objects share: reading the file (or standard input) and
//! naming an object by `NAMESPACE/NAME` or `NAME`.

use crate::error::Error;

/// The text of `file`, or of standard input for `-`; `what` names it in errors ("the policy",
/// "the services").
pub(crate) fn read(file: &std::path::Path, what: &'static str) -> Result<String, Error> {
    if file.as_os_str() == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).map_err(|source| {
            Error::Io {
                what: format!("reading {what} from standard input"),
                source,
            }
        })?;
        return Ok(t);
    }
    std::fs::read_to_string(file).map_err(|source| {
        Error::File(xylem_api::FileError {
            what: "reading the file to import",
            path: file.to_owned(),
            source,
        })
    })
}

/// `NAMESPACE/NAME` or `NAME` (in `default`) as (namespace, name); `kind` names the argument
/// in the error.
pub(crate) fn namespaced<'n>(n: &'n str, kind: &'static str) -> Result<(&'n str, &'n str), Error> {
    let (ns, name) = n.split_once('/').unwrap_or(("default", n));
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        return Err(Error::config(
            kind,
            format!("'{n}' is not NAMESPACE/NAME or NAME"),
        ));
    }
    Ok((ns, name))
}
