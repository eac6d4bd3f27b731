//! MaxResults/NextToken paging over id-ordered results. The token names the first item of the
//! next page, so paging stays correct while items come and go between calls.

use super::error::Ec2Error;

#[derive(Debug)]
pub struct Page<'a, T> {
    pub items: Vec<&'a T>,
    pub next_token: Option<String>,
}

/// Limits and rules one Describe action applies to paging.
#[derive(Debug, Clone, Copy)]
pub struct PageRule {
    pub min: u32,
    pub max: u32,
    /// MaxResults cannot be combined with explicit ids for most Describe actions.
    pub exclusive_with_ids: bool,
}

pub const DEFAULT_RULE: PageRule = PageRule {
    min: 5,
    max: 1000,
    exclusive_with_ids: true,
};

/// Cuts one page out of `items`, which must be sorted by `key`.
pub fn paginate<'a, T>(
    items: Vec<&'a T>,
    key: impl Fn(&T) -> &str,
    max_results: Option<u32>,
    token: Option<&str>,
    rule: PageRule,
    ids_given: bool,
) -> Result<Page<'a, T>, Ec2Error> {
    if let Some(max) = max_results {
        if ids_given && rule.exclusive_with_ids {
            return Err(Ec2Error::combination(
                "MaxResults cannot be used together with explicit resource ids",
            ));
        }
        if !(rule.min..=rule.max).contains(&max) {
            return Err(Ec2Error::invalid_value(format!(
                "MaxResults {max} is outside {}..={}",
                rule.min, rule.max
            )));
        }
    }
    let start = match token {
        Some(token) => {
            let first = decode(token)?;
            items.iter().take_while(|i| key(i) < first.as_str()).count()
        }
        None => 0,
    };
    let size = max_results.map_or(usize::MAX, |m| m as usize);
    let rest = &items[start..];
    let (page, after) = rest.split_at(rest.len().min(size));
    Ok(Page {
        items: page.to_vec(),
        next_token: after.first().map(|next| encode(key(next))),
    })
}

fn encode(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode(token: &str) -> Result<String, Ec2Error> {
    let bad = || {
        Ec2Error::new(
            "InvalidPaginationToken",
            format!("the token '{token}' is invalid"),
        )
    };
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Result<Vec<u8>, _> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect();
    String::from_utf8(bytes.map_err(|_| bad())?).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("eni-{i:02}")).collect()
    }

    #[test]
    fn walks_all_pages_in_order() {
        let all = ids(12);
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let items: Vec<&String> = all.iter().collect();
            let page = paginate(
                items,
                String::as_str,
                Some(5),
                token.as_deref(),
                DEFAULT_RULE,
                false,
            )
            .unwrap();
            seen.extend(page.items.iter().map(|s| s.to_string()));
            token = page.next_token;
            if token.is_none() {
                break;
            }
        }
        assert_eq!(seen, all);
    }

    #[test]
    fn survives_deletion_between_pages() {
        let mut all = ids(10);
        let items: Vec<&String> = all.iter().collect();
        let first = paginate(items, String::as_str, Some(5), None, DEFAULT_RULE, false).unwrap();
        let token = first.next_token.unwrap();
        all.remove(5);
        let items: Vec<&String> = all.iter().collect();
        let second = paginate(
            items,
            String::as_str,
            Some(5),
            Some(&token),
            DEFAULT_RULE,
            false,
        )
        .unwrap();
        assert_eq!(second.items.first().unwrap().as_str(), "eni-06");
        assert!(second.next_token.is_none());
    }

    #[test]
    fn rejects_bad_limits_tokens_and_combinations() {
        let all = ids(3);
        let items = || all.iter().collect::<Vec<_>>();
        let err =
            paginate(items(), String::as_str, Some(4), None, DEFAULT_RULE, false).unwrap_err();
        assert_eq!(err.code, "InvalidParameterValue");
        let err = paginate(items(), String::as_str, Some(5), None, DEFAULT_RULE, true).unwrap_err();
        assert_eq!(err.code, "InvalidParameterCombination");
        let err = paginate(
            items(),
            String::as_str,
            None,
            Some("zz"),
            DEFAULT_RULE,
            false,
        )
        .unwrap_err();
        assert_eq!(err.code, "InvalidPaginationToken");
        let all_at_once =
            paginate(items(), String::as_str, None, None, DEFAULT_RULE, false).unwrap();
        assert_eq!(all_at_once.items.len(), 3);
        assert!(all_at_once.next_token.is_none());
    }
}
