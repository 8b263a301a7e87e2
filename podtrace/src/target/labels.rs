//! Kubernetes label selectors, as `kubectl get pods -l` takes them:
//! `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, with a
//! comma meaning *and*. Matched against the labels kubelet copies from the
//! pod onto its sandbox, so a selection stays node-local.

use std::{collections::HashMap, fmt};

/// A parsed selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// Why a selector does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

impl LabelSelector {
    /// Parses kubectl's selector syntax.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let fail = |reason: String| SelectorError {
            selector: text.to_owned(),
            reason,
        };
        let mut requirements = Vec::new();
        for part in split_top_level(text).map_err(fail)? {
            requirements.push(Requirement::parse(part.trim()).map_err(fail)?);
        }
        if requirements.is_empty() {
            return Err(fail("it is empty".into()));
        }
        Ok(Self {
            requirements,
            text: text.trim().to_owned(),
        })
    }

    /// Whether a pod with these labels is selected.
    pub fn matches(&self, labels: &HashMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Splits on the commas that separate requirements, not those inside `(…)`.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0u32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' if depth > 0 => return Err("nested parentheses".into()),
            '(' => depth += 1,
            ')' if depth == 0 => return Err("')' without '('".into()),
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err("'(' without ')'".into());
    }
    parts.push(&text[start..]);
    if parts.len() > 1 && parts.iter().any(|p| p.trim().is_empty()) {
        return Err("an empty requirement between commas".into());
    }
    Ok(parts.into_iter().filter(|p| !p.trim().is_empty()).collect())
}

impl Requirement {
    fn parse(part: &str) -> Result<Self, String> {
        if let Some(key) = part.strip_prefix('!') {
            return Ok(Self {
                key: key_of(key.trim())?,
                op: Op::DoesNotExist,
            });
        }
        for (sep, negate) in [("!=", true), ("==", false), ("=", false)] {
            if let Some((key, value)) = part.split_once(sep) {
                let value = value_of(value.trim())?;
                return Ok(Self {
                    key: key_of(key.trim())?,
                    op: if negate {
                        Op::NotIn(vec![value])
                    } else {
                        Op::In(vec![value])
                    },
                });
            }
        }
        if let Some((key, rest)) = part.split_once(char::is_whitespace) {
            let rest = rest.trim_start();
            let (negate, set) = if let Some(set) = rest.strip_prefix("notin") {
                (true, set)
            } else if let Some(set) = rest.strip_prefix("in") {
                (false, set)
            } else {
                return Err(format!("expected 'in' or 'notin' after {key:?}"));
            };
            let values = set_of(set.trim())?;
            return Ok(Self {
                key: key_of(key)?,
                op: if negate {
                    Op::NotIn(values)
                } else {
                    Op::In(values)
                },
            });
        }
        Ok(Self {
            key: key_of(part)?,
            op: Op::Exists,
        })
    }

    fn matches(&self, labels: &HashMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            Op::In(values) => value.is_some_and(|v| values.contains(v)),
            // As in Kubernetes: a pod without the key satisfies `k!=v` and `notin`.
            Op::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
        }
    }
}

/// `(a, b, c)`: at least one value.
fn set_of(text: &str) -> Result<Vec<String>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("expected a set of values in parentheses, not {text:?}"))?;
    let values = inner
        .split(',')
        .map(|v| value_of(v.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if values.iter().all(String::is_empty) {
        return Err("an empty set of values".into());
    }
    Ok(values)
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of
/// at most 63 characters of `[A-Za-z0-9-_.]`, starting and ending
/// alphanumeric.
fn key_of(text: &str) -> Result<String, String> {
    let name = match text.split_once('/') {
        Some((prefix, name)) => {
            let prefix_ok = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|l| {
                    !l.is_empty()
                        && l.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                });
            if !prefix_ok {
                return Err(format!("{text:?} has an invalid key prefix"));
            }
            name
        }
        None => text,
    };
    if name.is_empty() {
        return Err(format!("{text:?} is not a label key"));
    }
    if !label_name_ok(name) {
        return Err(format!(
            "{name:?} is not a label key (at most 63 of A-Z a-z 0-9 - _ ., starting and ending alphanumeric)"
        ));
    }
    Ok(text.to_owned())
}

/// A label value: empty, or like a key's name part.
fn value_of(text: &str) -> Result<String, String> {
    if text.is_empty() || label_name_ok(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a label value (at most 63 of A-Z a-z 0-9 - _ ., starting and ending alphanumeric)"
        ))
    }
}

fn label_name_ok(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selects(selector: &str, pairs: &[(&str, &str)]) -> bool {
        LabelSelector::parse(selector)
            .unwrap()
            .matches(&labels(pairs))
    }

    #[test]
    fn equality_and_inequality() {
        assert!(selects("app=web", &[("app", "web")]));
        assert!(selects("app==web", &[("app", "web"), ("tier", "fe")]));
        assert!(!selects("app=web", &[("app", "db")]));
        assert!(!selects("app=web", &[]));
        assert!(selects("app!=web", &[("app", "db")]));
        // kubectl: a pod without the key is selected by `!=`.
        assert!(selects("app!=web", &[]));
        assert!(!selects("app!=web", &[("app", "web")]));
        assert!(selects("app=", &[("app", "")]));
    }

    #[test]
    fn sets_and_existence() {
        assert!(selects("env in (prod, staging)", &[("env", "staging")]));
        assert!(!selects("env in (prod,staging)", &[("env", "dev")]));
        assert!(!selects("env in (prod)", &[]));
        assert!(selects("env notin (prod)", &[("env", "dev")]));
        assert!(selects("env notin (prod)", &[]));
        assert!(!selects("env notin (prod,dev)", &[("env", "dev")]));
        assert!(selects("canary", &[("canary", "")]));
        assert!(!selects("canary", &[]));
        assert!(selects("!canary", &[]));
        assert!(!selects("! canary", &[("canary", "1")]));
    }

    #[test]
    fn commas_mean_and_outside_sets_only() {
        let s = "app=web,env in (prod,staging),!canary";
        assert!(selects(s, &[("app", "web"), ("env", "prod")]));
        assert!(!selects(
            s,
            &[("app", "web"), ("env", "prod"), ("canary", "y")]
        ));
        assert!(!selects(s, &[("app", "web"), ("env", "dev")]));
        assert!(selects(
            "app.kubernetes.io/name=web",
            &[("app.kubernetes.io/name", "web")]
        ));
    }

    #[test]
    fn bad_selectors_say_why() {
        for (text, why) in [
            ("", "it is empty"),
            ("app=web,", "an empty requirement"),
            ("app in (a,b", "'(' without ')'"),
            ("app in a,b", "expected a set of values"),
            ("app within (a)", "expected 'in' or 'notin'"),
            ("app=we b", "not a label value"),
            ("-app=web", "not a label key"),
            ("Example.COM/app=x", "invalid key prefix"),
            ("a=b)", "')' without '('"),
            ("app in ()", "an empty set"),
        ] {
            let err = LabelSelector::parse(text).unwrap_err();
            assert!(err.to_string().contains(why), "{text:?}: {err}");
        }
        assert_eq!(
            LabelSelector::parse("app=we b").unwrap_err().to_string(),
            "invalid label selector \"app=we b\": \"we b\" is not a label value (at most 63 of A-Z a-z 0-9 - _ ., starting and ending alphanumeric)"
        );
    }
}
