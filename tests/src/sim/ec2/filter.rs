//! Describe* filters: every filter must match (AND); within one filter any value may match (OR);
//! values may hold the wildcards `*` and `?` as in EC2.

use super::error::Ec2Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

/// What a resource answers for one filter name: its values, or `None` for a name this resource
/// type does not support.
pub type FieldLookup<'a, T> = &'a dyn Fn(&T, &str) -> Option<Vec<String>>;

/// Keeps the items that match every filter; an unknown filter name is an error, as in EC2.
pub fn apply<'t, T>(
    items: impl IntoIterator<Item = &'t T>,
    filters: &[Filter],
    lookup: FieldLookup<'_, T>,
) -> Result<Vec<&'t T>, Ec2Error>
where
    T: 't,
{
    let mut kept = Vec::new();
    for item in items {
        if matches_all(item, filters, lookup)? {
            kept.push(item);
        }
    }
    Ok(kept)
}

fn matches_all<T>(
    item: &T,
    filters: &[Filter],
    lookup: FieldLookup<'_, T>,
) -> Result<bool, Ec2Error> {
    for filter in filters {
        let Some(have) = lookup(item, &filter.name) else {
            return Err(Ec2Error::invalid_value(format!(
                "the filter '{}' is invalid",
                filter.name
            )));
        };
        let hit = filter
            .values
            .iter()
            .any(|pattern| have.iter().any(|value| glob(pattern, value)));
        if !hit {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Values of the generic tag filters (`tag:<key>`, `tag-key`, `tag-value`) for a resource with
/// these tags, or `None` when `name` is not a tag filter.
pub fn tag_field<'a>(
    tags: impl IntoIterator<Item = (&'a String, &'a String)>,
    name: &str,
) -> Option<Vec<String>> {
    let tags: Vec<_> = tags.into_iter().collect();
    if let Some(key) = name.strip_prefix("tag:") {
        return Some(
            tags.iter()
                .filter(|(k, _)| k.as_str() == key)
                .map(|(_, v)| v.to_string())
                .collect(),
        );
    }
    match name {
        "tag-key" => Some(tags.iter().map(|(k, _)| k.to_string()).collect()),
        "tag-value" => Some(tags.iter().map(|(_, v)| v.to_string()).collect()),
        _ => None,
    }
}

/// Shell-style match where `*` is any run of characters and `?` exactly one.
pub fn glob(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    let (mut pi, mut vi) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, vi));
            pi += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            vi = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn glob_handles_wildcards() {
        assert!(glob("eni-*", "eni-0abc"));
        assert!(glob("10.0.?.5", "10.0.1.5"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b", "aXXc"));
        assert!(!glob("abc", "abcd"));
    }

    #[test]
    fn filters_are_anded_and_values_ored() {
        let items = [("a", "available"), ("b", "in-use"), ("c", "available")];
        let lookup = |item: &(&str, &str), name: &str| match name {
            "status" => Some(vec![item.1.to_string()]),
            "id" => Some(vec![item.0.to_string()]),
            _ => None,
        };
        let filters = [
            Filter {
                name: "status".into(),
                values: vec!["available".into()],
            },
            Filter {
                name: "id".into(),
                values: vec!["c".into(), "b".into()],
            },
        ];
        let kept = apply(&items, &filters, &lookup).unwrap();
        assert_eq!(kept, [&("c", "available")]);

        let bad = [Filter {
            name: "nope".into(),
            values: vec!["x".into()],
        }];
        assert_eq!(
            apply(&items, &bad, &lookup).unwrap_err().code,
            "InvalidParameterValue"
        );
    }

    #[test]
    fn tag_filters() {
        let tags: BTreeMap<String, String> = [("cluster".to_string(), "one".to_string())].into();
        assert_eq!(tag_field(&tags, "tag:cluster").unwrap(), ["one"]);
        assert!(tag_field(&tags, "tag:other").unwrap().is_empty());
        assert_eq!(tag_field(&tags, "tag-key").unwrap(), ["cluster"]);
        assert!(tag_field(&tags, "status").is_none());
    }
}
