//! Config problems with their place in the file: `file:line:col: error: what (help: how)`.

use super::locate::{Locator, Pos};
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    pub pos: Pos,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {level}: {}",
            self.file.display(),
            self.pos.line,
            self.pos.col,
            self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// A config that was refused, with every problem found.
#[derive(Debug, thiserror::Error)]
#[error("{}", render(.0))]
pub struct ConfigError(pub Vec<Diagnostic>);

fn render(diags: &[Diagnostic]) -> String {
    let lines: Vec<String> = diags.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// Collects problems during checking/compilation, locating each by its config path.
pub struct Diags<'a> {
    file: &'a Path,
    locator: &'a Locator,
    pub items: Vec<Diagnostic>,
}

impl<'a> Diags<'a> {
    pub fn new(file: &'a Path, locator: &'a Locator) -> Self {
        Diags {
            file,
            locator,
            items: Vec::new(),
        }
    }

    pub fn error(
        &mut self,
        path: &str,
        message: impl Into<String>,
        help: impl Into<Option<String>>,
    ) {
        self.push(Severity::Error, path, message.into(), help.into());
    }

    pub fn warn(
        &mut self,
        path: &str,
        message: impl Into<String>,
        help: impl Into<Option<String>>,
    ) {
        self.push(Severity::Warning, path, message.into(), help.into());
    }

    fn push(&mut self, severity: Severity, path: &str, message: String, help: Option<String>) {
        self.items.push(Diagnostic {
            severity,
            file: self.file.to_path_buf(),
            pos: self.locator.find(path),
            message,
            help,
        });
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }
}
