//! Path templates: `/users/{id}/orders/{order}` matches one whole segment per `{name}`, and
//! `{rest...}` (last) matches the remaining path. Matching runs on the normalized path, so a
//! bound value never holds `/` (except `rest`), `.` or `..` segments or an encoded slash.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::fmt;

/// Everything but unreserved characters is encoded, `/` included: a value put into a path
/// can never add a segment or a query parameter.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A value (percent-decoded first, so nothing is encoded twice) as one encoded segment.
/// A value of `.` or `..` is encoded too, so it names a file instead of moving the path.
pub fn encode_segment(raw: &str) -> String {
    let decoded = percent_decode_str(raw).decode_utf8_lossy();
    match decoded.as_ref() {
        "." => "%2E".into(),
        ".." => "%2E%2E".into(),
        value => utf8_percent_encode(value, VALUE).to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Var(String),
    /// `{name...}`: the rest of the path, zero or more segments.
    Rest(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    text: String,
    segs: Vec<Seg>,
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn is_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl PathTemplate {
    /// Parses a template; the error says what is wrong.
    pub fn parse(text: &str) -> Result<PathTemplate, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err("a path template starts with `/`".into());
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segs = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let seg = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(inner) => match inner.strip_suffix("...") {
                    Some(name) if i + 1 == parts.len() => Seg::Rest(name.to_string()),
                    Some(_) => return Err("`{name...}` must be the last segment".into()),
                    None => Seg::Var(inner.to_string()),
                },
                None if part.contains(['{', '}']) => {
                    return Err(format!("`{part}`: a `{{name}}` must be a whole segment"))
                }
                None => Seg::Lit(part.to_string()),
            };
            if let Seg::Var(name) | Seg::Rest(name) = &seg {
                if !is_var_name(name) {
                    return Err(format!(
                        "`{name}` is not a variable name (letters, digits, `_`)"
                    ));
                }
                if segs
                    .iter()
                    .any(|s| matches!(s, Seg::Var(n) | Seg::Rest(n) if n == name))
                {
                    return Err(format!("`{{{name}}}` appears twice"));
                }
            }
            segs.push(seg);
        }
        Ok(PathTemplate {
            text: text.to_string(),
            segs,
        })
    }

    /// The literal part before the first variable: what the route trie indexes.
    pub fn prefix(&self) -> String {
        let mut out = String::from("/");
        for seg in &self.segs {
            match seg {
                Seg::Lit(l) => {
                    out.push_str(l);
                    out.push('/');
                }
                _ => return out,
            }
        }
        out.pop();
        if out.is_empty() {
            out.push('/');
        }
        out
    }

    /// The literal segments, for checking they are in normalized form.
    pub fn literal_path(&self) -> String {
        let mut out = String::new();
        for seg in &self.segs {
            out.push('/');
            match seg {
                Seg::Lit(l) => out.push_str(l),
                _ => out.push('x'),
            }
        }
        out
    }

    /// The names this template binds.
    pub fn names(&self) -> impl Iterator<Item = &str> + Clone {
        self.segs.iter().filter_map(|s| match s {
            Seg::Var(n) | Seg::Rest(n) => Some(n.as_str()),
            Seg::Lit(_) => None,
        })
    }

    pub fn matches(&self, path: &str, ignore_case: bool) -> bool {
        self.walk(path, ignore_case, |_, _| {})
    }

    /// The values bound by a matching path, by name (as written, whatever the case rule).
    pub fn bind<'a>(&'a self, path: &'a str, ignore_case: bool) -> Option<Vec<(&'a str, &'a str)>> {
        let mut out = Vec::new();
        self.walk(path, ignore_case, |name, value| out.push((name, value)))
            .then_some(out)
    }

    fn walk<'a>(
        &'a self,
        path: &'a str,
        ignore_case: bool,
        mut bound: impl FnMut(&'a str, &'a str),
    ) -> bool {
        let Some(mut rest) = path.strip_prefix('/') else {
            return false;
        };
        for (i, seg) in self.segs.iter().enumerate() {
            if let Seg::Rest(name) = seg {
                bound(name, rest);
                return true;
            }
            let (part, tail) = match rest.split_once('/') {
                Some((p, t)) => (p, Some(t)),
                None => (rest, None),
            };
            match seg {
                Seg::Lit(l) if l == part || (ignore_case && l.eq_ignore_ascii_case(part)) => {}
                Seg::Var(name) if !part.is_empty() => bound(name, part),
                _ => return false,
            }
            match tail {
                Some(t) => rest = t,
                None => {
                    // The path ended: the template must end here too (or with `{rest...}`).
                    return match &self.segs[i + 1..] {
                        [] => true,
                        [Seg::Rest(name)] => {
                            bound(name, "");
                            true
                        }
                        _ => false,
                    };
                }
            }
        }
        false
    }

    /// Whether every path `other` matches, this template matches too.
    pub fn covers(&self, other: &PathTemplate) -> bool {
        for (i, mine) in self.segs.iter().enumerate() {
            let Some(theirs) = other.segs.get(i) else {
                return false;
            };
            match (mine, theirs) {
                (Seg::Rest(_), _) => return true,
                (Seg::Var(_), Seg::Var(_) | Seg::Lit(_)) => {}
                (Seg::Lit(a), Seg::Lit(b)) if a == b => {}
                _ => return false,
            }
        }
        self.segs.len() == other.segs.len()
    }
}

/// A piece of a text with `{name}` placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Name(&'a str),
}

/// Splits `text` at its `{name}` placeholders (empty text pieces are left out).
pub fn placeholders(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let len = rest[start..]
            .find('}')
            .ok_or_else(|| format!("`{text}` has an unclosed `{{`"))?;
        pieces.push(Piece::Text(&rest[..start]));
        pieces.push(Piece::Name(&rest[start + 1..start + len]));
        rest = &rest[start + len + 1..];
    }
    pieces.push(Piece::Text(rest));
    pieces.retain(|p| !matches!(p, Piece::Text("")));
    Ok(pieces)
}

/// A target path with `{name}` placeholders filled from a route template's bindings
/// (`rewrite: /internal/users/{id}`), or a path regex's capture groups (`{1}`, `{name}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill {
    parts: Vec<FillPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FillPart {
    Text(String),
    Var(String),
}

impl Fill {
    /// Parses `text` whose placeholders must all be among `names`.
    pub fn parse<'a>(
        text: &str,
        names: impl Iterator<Item = &'a str> + Clone,
    ) -> Result<Fill, String> {
        let mut parts = Vec::new();
        for piece in placeholders(text)? {
            parts.push(match piece {
                Piece::Text(t) => FillPart::Text(t.to_string()),
                Piece::Name(name) if names.clone().any(|n| n == name) => {
                    FillPart::Var(name.to_string())
                }
                Piece::Name(name) => {
                    return Err(format!(
                        "`{{{name}}}` is not bound by the route's path_template or path_regex"
                    ))
                }
            });
        }
        Ok(Fill { parts })
    }

    pub fn render(&self, bound: &[(String, String)]) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                FillPart::Text(t) => out.push_str(t),
                FillPart::Var(name) => {
                    if let Some((_, v)) = bound.iter().find(|(n, _)| n == name) {
                        // Segment by segment: a `{rest...}` value keeps its slashes.
                        let segments: Vec<String> = v.split('/').map(encode_segment).collect();
                        out.push_str(&segments.join("/"));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> PathTemplate {
        PathTemplate::parse(text).unwrap()
    }

    #[test]
    fn binds_whole_segments_and_the_rest() {
        let tpl = t("/users/{id}/orders/{order}");
        assert_eq!(
            tpl.bind("/users/7/orders/x1", false),
            Some(vec![("id", "7"), ("order", "x1")])
        );
        assert!(!tpl.matches("/users/7/orders", false));
        assert!(tpl.matches("/USERS/7/Orders/x1", true));
        assert!(!tpl.matches("/users/7/orders/x1/more", false));
        assert!(
            !tpl.matches("/users//orders/x1", false),
            "an empty segment binds nothing"
        );
        assert_eq!(tpl.prefix(), "/users/");
        let files = t("/files/{rest...}");
        assert_eq!(
            files.bind("/files/a/b.txt", false),
            Some(vec![("rest", "a/b.txt")])
        );
        assert_eq!(files.bind("/files/", false), Some(vec![("rest", "")]));
        assert_eq!(files.bind("/files", false), Some(vec![("rest", "")]));
        assert!(!files.matches("/filesx", false));
        assert_eq!(t("/{id}").prefix(), "/");
        assert_eq!(t("/a/b").prefix(), "/a/b");
    }

    #[test]
    fn refuses_malformed_templates() {
        assert!(PathTemplate::parse("users/{id}").is_err());
        assert!(PathTemplate::parse("/users/x{id}").is_err());
        assert!(PathTemplate::parse("/{rest...}/x").is_err());
        assert!(PathTemplate::parse("/{a}/{a}").is_err());
        assert!(PathTemplate::parse("/{1a}").is_err());
    }

    #[test]
    fn covering() {
        assert!(
            t("/users/{id}").covers(&t("/users/{name}")),
            "same shape: a conflict"
        );
        assert!(t("/users/{id}").covers(&t("/users/me")));
        assert!(!t("/users/me").covers(&t("/users/{id}")));
        assert!(t("/files/{rest...}").covers(&t("/files/{a}/{b}")));
        assert!(!t("/users/{id}").covers(&t("/users/{id}/orders")));
    }

    #[test]
    fn fills_bound_values() {
        let tpl = t("/users/{id}");
        let fill = Fill::parse("/internal/users/{id}/profile", tpl.names()).unwrap();
        let bound = [("id".to_string(), "42".to_string())];
        assert_eq!(fill.render(&bound), "/internal/users/42/profile");
        assert!(Fill::parse("/x/{nope}", tpl.names()).is_err());
    }
}
