//! `sandbox.debug`: which components write debug lines (upstream 0.13).

use super::keys::nearest;
use super::{OptValue, OptionError};

/// The components, in the order lines are documented.
pub const FLAGS: &[&str] = &["net", "exec", "vfs", "protocol", "vm"];
/// Spellings found in copied examples, mapped to our components.
const ALIASES: &[(&str, &str)] = &[("fs", "vfs"), ("network", "net"), ("sandbox", "vm")];

/// The enabled components from `sandbox.debug`; when it is undefined, from
/// `$GONDOLIN_DEBUG` (`env`), whose unknown words are ignored, as upstream.
pub fn flags(config: &OptValue, env: Option<&str>) -> Result<Vec<&'static str>, OptionError> {
    let mut on: Vec<&'static str> = Vec::new();
    match config {
        OptValue::Undefined => {
            for t in env.unwrap_or("").split(',') {
                if !matches!(t.trim(), "0" | "false") {
                    add(&mut on, t, false)?;
                }
            }
        }
        OptValue::Bool(true) => add(&mut on, "*", false)?,
        OptValue::Bool(false) => {}
        OptValue::Array(items) => {
            for item in items {
                add(&mut on, &item.to_js_string(), true)?;
            }
        }
        _ => {
            return Err(OptionError(
                "sandbox.debug must be a boolean or an array of components".into(),
            ))
        }
    }
    Ok(on)
}

fn add(on: &mut Vec<&'static str>, raw: &str, strict: bool) -> Result<(), OptionError> {
    let t = raw.trim();
    if t.is_empty() {
        return Ok(());
    }
    let mut enable = |f: &'static str| {
        if !on.contains(&f) {
            on.push(f);
        }
    };
    if matches!(t, "*" | "all" | "1" | "true") {
        FLAGS.iter().for_each(|f| enable(f));
        return Ok(());
    }
    let name = ALIASES.iter().find(|(a, _)| *a == t).map_or(t, |(_, f)| *f);
    if let Some(f) = FLAGS.iter().find(|f| **f == name) {
        enable(f);
    } else if strict {
        let names = FLAGS.iter().chain(ALIASES.iter().map(|(a, _)| a)).copied();
        let hint = match nearest(t, names) {
            Some(near) => format!("did you mean \"{near}\"?"),
            None => format!("valid: {}, \"*\"", FLAGS.join(", ")),
        };
        return Err(OptionError(format!(
            "unknown sandbox.debug component {}; {hint}",
            OptValue::String(t.into()).to_json()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(items: &[&str]) -> OptValue {
        OptValue::Array(
            items
                .iter()
                .map(|s| OptValue::String(s.to_string()))
                .collect(),
        )
    }

    #[test]
    fn config_env_and_aliases() {
        assert_eq!(flags(&arr(&["*"]), None).unwrap(), FLAGS);
        assert_eq!(flags(&arr(&["fs", " net "]), None).unwrap(), ["vfs", "net"]);
        assert_eq!(
            flags(&OptValue::Undefined, Some("exec,bogus")).unwrap(),
            ["exec"]
        );
        assert!(flags(&OptValue::Undefined, Some("0")).unwrap().is_empty());
        assert!(flags(&OptValue::Bool(false), Some("*")).unwrap().is_empty());
    }

    #[test]
    fn unknown_components_are_refused_with_the_nearest() {
        let e = flags(&arr(&["nett"]), None).unwrap_err().0;
        assert_eq!(
            e,
            "unknown sandbox.debug component \"nett\"; did you mean \"net\"?"
        );
        let e = flags(&OptValue::String("net".into()), None).unwrap_err().0;
        assert!(e.contains("must be a boolean or an array"));
    }
}
