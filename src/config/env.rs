//! `${VAR}` / `${VAR:-default}` expansion on the config text, before YAML parsing, so any
//! value (ports, durations, secrets' env names) can come from the environment.
//! Expansion keeps line numbers intact; comments are left alone so a commented-out
//! reference to an unset variable is not an error. `$$` writes a literal `$`.
//! `${claim.NAME}`, `${client_ip}` and `${request_id}` are the per-request variables of the
//! `headers` policy: they are left in place, never read from the environment.

/// An unset `${VAR}` reference, located in the original text (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsetVar {
    pub name: String,
    pub line: usize,
    pub col: usize,
}

/// Expands every reference; returns the new text or all unset references.
pub fn expand(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<UnsetVar>> {
    let mut out = String::with_capacity(text.len());
    let mut unset = Vec::new();
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        let (code, comment) = line.split_at(comment_start(line));
        expand_line(code, idx + 1, &lookup, &mut out, &mut unset);
        out.push_str(comment);
    }
    if unset.is_empty() {
        Ok(out)
    } else {
        Err(unset)
    }
}

fn expand_line(
    code: &str,
    line: usize,
    lookup: &impl Fn(&str) -> Option<String>,
    out: &mut String,
    unset: &mut Vec<UnsetVar>,
) {
    let mut rest = code;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                out.push_str(&rest[pos..]);
                return;
            };
            let reference = &body[..end];
            if is_request_variable(reference) {
                out.push_str(&rest[pos..pos + 3 + end]);
                rest = &body[end + 1..];
                continue;
            }
            let (name, default) = match reference.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (reference, None),
            };
            match lookup(name).or_else(|| default.map(str::to_string)) {
                Some(value) => out.push_str(&value),
                None => unset.push(UnsetVar {
                    name: name.to_string(),
                    line,
                    col: code.len() - rest.len() + pos + 1,
                }),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
}

/// A variable the `headers` policy fills in per request.
fn is_request_variable(name: &str) -> bool {
    name.starts_with("claim.") || name == "client_ip" || name == "request_id"
}

/// Byte offset where a YAML comment starts on this line (or the line's length).
fn comment_start(line: &str) -> usize {
    let (mut single, mut double) = (false, false);
    let mut prev_blank = true;
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev_blank => return i,
            _ => {}
        }
        prev_blank = c == ' ' || c == '\t';
    }
    line.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "PORT").then(|| "8080".to_string())
    }

    #[test]
    fn expands_defaults_escapes_and_skips_comments() {
        let text = "a: ${PORT}\nb: ${NOPE:-x}\nc: $$HOME # ${UNSET}\n";
        assert_eq!(
            expand(text, env).unwrap(),
            "a: 8080\nb: x\nc: $HOME # ${UNSET}\n"
        );
    }

    #[test]
    fn request_variables_are_left_for_the_headers_policy() {
        let text = "v: 'u=${claim.sub} ip=${client_ip} id=${request_id} p=${PORT}'\n";
        assert_eq!(
            expand(text, env).unwrap(),
            "v: 'u=${claim.sub} ip=${client_ip} id=${request_id} p=8080'\n"
        );
    }

    #[test]
    fn reports_every_unset_reference_with_position() {
        let err = expand("x: 1\ny: '${A}' ${B}\n", env).unwrap_err();
        let got: Vec<_> = err
            .iter()
            .map(|u| (u.name.as_str(), u.line, u.col))
            .collect();
        assert_eq!(got, vec![("A", 2, 5), ("B", 2, 11)]);
    }
}
