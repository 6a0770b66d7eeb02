//! Per-file isolation on reload. When one file of a config directory is refused, the
//! others' changes still apply and the refused file keeps its last good version (a new
//! file without one stays out). A change that only works with another file's refused
//! version is refused too, saying so. The base file is all-or-nothing, and so is a file
//! whose last good version no longer compiles with the rest: nothing else can stand in.

use crate::config::files::{self, Part, NAMED_SECTIONS};
use crate::config::{ConfigError, Diagnostic, Parsed, RawPart, Severity, Source};
use crate::diag::Locator;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Each team file's version in the running config.
pub type Good = BTreeMap<PathBuf, Arc<Parsed<RawPart>>>;

/// A file whose current text is not used, and why.
#[derive(Debug)]
pub struct Refused {
    pub path: PathBuf,
    pub errors: Vec<Diagnostic>,
    /// Its last good version stays in the config.
    pub kept: bool,
}

/// What a reload makes of the files: the config to run, and the files left out.
pub struct Chosen<T> {
    pub source: Source,
    pub built: T,
    pub refused: Vec<Refused>,
}

/// The files as they are now, a refused file replaced by its version in `good`. `build`
/// checks a candidate (compiles it); the errors it reports in a changed team file refuse
/// that file alone, and the rest is tried again. Errors in a file that did not change are
/// charged to the changed file whose last good version clears them. Err when no changed
/// team file can be refused to clear the errors (they are in the base, or the base's
/// change causes them): the whole reload is refused (with every file's errors).
pub fn choose<T>(
    path: &Path,
    good: &Good,
    mut build: impl FnMut(&Source) -> Result<T, ConfigError>,
) -> Result<Chosen<T>, ConfigError> {
    let read = files::read(path, good)?;
    let mut refused = Vec::new();
    // (path, version used, whether it is a new version that may still be refused)
    let mut chosen: Vec<(PathBuf, Option<Part>, bool)> = Vec::new();
    for (p, part) in read.parts {
        let kept = good.get(&p).cloned();
        match part {
            Ok(part) => {
                let new = kept.as_ref().is_none_or(|k| k.hash != part.hash);
                chosen.push((p, Some(part), new));
            }
            Err(e) => {
                refused.push(Refused {
                    path: p.clone(),
                    errors: e.0,
                    kept: kept.is_some(),
                });
                chosen.push((p, kept, false));
            }
        }
    }
    let mut attempt = |chosen: &[(PathBuf, Option<Part>, bool)]| {
        let parts: Vec<_> = chosen.iter().filter_map(|(_, v, _)| v.clone()).collect();
        files::assemble(path, read.base.clone(), parts)
            .and_then(|source| build(&source).map(|built| (source, built)))
            .map_err(|e| e.0)
    };
    // Each round refuses at least one file, or ends.
    loop {
        let errors = match attempt(&chosen) {
            Ok((source, built)) => {
                return Ok(Chosen {
                    source,
                    built,
                    refused,
                })
            }
            Err(errors) => errors,
        };
        let blamed = |p: &Path| errors.iter().any(|d| is_error(d) && d.file == p);
        let mut culprits: Vec<usize> = (0..chosen.len())
            .filter(|&i| chosen[i].2 && blamed(&chosen[i].0))
            .collect();
        if culprits.is_empty() {
            // The errors are in files that did not change (a name a changed file now
            // defines twice, or took away): the changed file whose old version clears
            // them is refused, not the file the error is in.
            culprits.extend(culprit(&chosen, good, &mut attempt));
        }
        if culprits.is_empty() {
            let mut all: Vec<Diagnostic> = refused.into_iter().flat_map(|r| r.errors).collect();
            all.extend(errors);
            return Err(ConfigError(all));
        }
        for i in culprits {
            let (p, version, new) = &mut chosen[i];
            *version = good.get(p).cloned();
            *new = false;
            let mine: Vec<Diagnostic> = errors.iter().filter(|d| d.file == *p).cloned().collect();
            refused.push(Refused {
                path: p.clone(),
                errors: if mine.is_empty() {
                    errors.clone()
                } else {
                    mine
                },
                kept: version.is_some(),
            });
        }
        explain_dependencies(&mut refused);
    }
}

/// The changed file whose last good version alone makes the errors outside changed files
/// go away.
fn culprit<T>(
    chosen: &[(PathBuf, Option<Part>, bool)],
    good: &Good,
    attempt: &mut impl FnMut(&[(PathBuf, Option<Part>, bool)]) -> Result<T, Vec<Diagnostic>>,
) -> Option<usize> {
    let changed = |c: &[(PathBuf, Option<Part>, bool)], d: &Diagnostic| {
        c.iter().any(|(p, _, new)| *new && d.file == *p)
    };
    (0..chosen.len()).filter(|&i| chosen[i].2).find(|&i| {
        let mut trial = chosen.to_vec();
        trial[i].1 = good.get(&trial[i].0).cloned();
        trial[i].2 = false;
        match attempt(&trial) {
            Ok(_) => true,
            Err(errors) => errors.iter().all(|d| !is_error(d) || changed(&trial, d)),
        }
    })
}

fn is_error(d: &Diagnostic) -> bool {
    d.severity == Severity::Error
}

/// A refused file's error about a name that only another refused file's new version
/// defines says so: the fix is in the other file.
fn explain_dependencies(refused: &mut [Refused]) {
    let defined: Vec<(PathBuf, Locator)> = refused
        .iter()
        .filter_map(|r| {
            let text = std::fs::read_to_string(&r.path).ok()?;
            Some((r.path.clone(), Locator::new(&text)))
        })
        .collect();
    for r in refused.iter_mut() {
        for d in r.errors.iter_mut().filter(|d| is_error(d)) {
            let Some((name, other)) = quoted(&d.message).find_map(|name| {
                let (other, _) = defined.iter().find(|(other, locator)| {
                    *other != r.path
                        && NAMED_SECTIONS
                            .iter()
                            .any(|s| locator.has(&format!("{s}.{name}")))
                })?;
                Some((name, other))
            }) else {
                continue;
            };
            let note = format!(
                "`{name}` is defined only in the new version of {}, which is refused: fix that file first",
                other.display()
            );
            if !d.help.as_deref().is_some_and(|h| h.contains(&note)) {
                d.help = Some(match d.help.take() {
                    Some(help) => format!("{note}; {help}"),
                    None => note,
                });
            }
        }
    }
}

/// The `quoted` names of a message.
fn quoted(message: &str) -> impl Iterator<Item = &str> {
    message.split('`').skip(1).step_by(2)
}
