//! Lambda's names and formats: function names as its APIs accept them, ARNs, version order,
//! and the dates it writes (`LastModified`, log stream names).

use std::cmp::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;

/// A function and the qualifier it was invoked with (`None` means `$LATEST`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub name: String,
    pub qualifier: Option<String>,
}

/// Why a FunctionName cannot be served, in Lambda's own terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NameError {
    /// 400 `ValidationException`: the name is malformed.
    Invalid(String),
    /// 400 `InvalidParameterValueException`: the name's qualifier and `?Qualifier=` disagree.
    QualifierMismatch,
    /// 404: an ARN of another region or account; carries the ARN for the message.
    Elsewhere(String),
}

pub(crate) const LATEST: &str = "$LATEST";

/// Accepts `NAME`, `NAME:QUALIFIER`, `ACCOUNT:function:NAME[:QUALIFIER]` and
/// `arn:PARTITION:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`, like Lambda does.
pub(crate) fn parse_function_name(
    raw: &str,
    qualifier_param: Option<&str>,
    region: &str,
    account: &str,
) -> Result<Target, NameError> {
    let parts: Vec<&str> = raw.split(':').collect();
    let (name, derived) = match parts.as_slice() {
        [name] => (*name, None),
        [name, q] => (*name, Some(*q)),
        [acct, "function", name] => {
            same_place(raw, region, region, acct, account)?;
            (*name, None)
        }
        [acct, "function", name, q] => {
            same_place(raw, region, region, acct, account)?;
            (*name, Some(*q))
        }
        ["arn", _partition, "lambda", reg, acct, "function", name] => {
            same_place(raw, reg, region, acct, account)?;
            (*name, None)
        }
        ["arn", _partition, "lambda", reg, acct, "function", name, q] => {
            same_place(raw, reg, region, acct, account)?;
            (*name, Some(*q))
        }
        _ => return Err(NameError::Invalid(format!("invalid function name {raw:?}"))),
    };
    if !valid_name(name) {
        return Err(NameError::Invalid(format!("invalid function name {raw:?}")));
    }
    let param = qualifier_param.filter(|q| !q.is_empty());
    let qualifier = match (derived, param) {
        (Some(d), Some(p)) if d != p => return Err(NameError::QualifierMismatch),
        (d, p) => d.or(p),
    };
    if let Some(q) = qualifier
        && q != LATEST
        && !valid_name(q)
    {
        return Err(NameError::Invalid(format!("invalid qualifier {q:?}")));
    }
    Ok(Target {
        name: name.to_owned(),
        qualifier: qualifier.map(str::to_owned),
    })
}

fn same_place(
    raw: &str,
    region: &str,
    our_region: &str,
    account: &str,
    our_account: &str,
) -> Result<(), NameError> {
    if region == our_region && account == our_account {
        Ok(())
    } else {
        Err(NameError::Elsewhere(raw.to_owned()))
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 140
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(crate) fn function_arn(
    region: &str,
    account: &str,
    name: &str,
    qualifier: Option<&str>,
) -> String {
    match qualifier {
        Some(q) => format!("arn:aws:lambda:{region}:{account}:function:{name}:{q}"),
        None => format!("arn:aws:lambda:{region}:{account}:function:{name}"),
    }
}

/// Published versions are numbers, so `10` is newer than `9`; anything else sorts after them by
/// text so the order is total.
pub(crate) fn version_order(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// Lambda's `LastModified` format: `2026-11-28T09:00:00.123+0000`.
pub(crate) fn last_modified(at: SystemTime) -> String {
    let t = utc(at);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}+0000",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Lambda's `AWS_LAMBDA_LOG_STREAM_NAME`: `YYYY/MM/DD/[VERSION]<32 hex>`, one per instance.
pub(crate) fn log_stream_name(version: &str, at: SystemTime) -> String {
    let t = utc(at);
    format!(
        "{:04}/{:02}/{:02}/[{version}]{}",
        t.year(),
        t.month() as u8,
        t.day(),
        uuid::Uuid::new_v4().simple()
    )
}

/// `at` in UTC; a time the calendar cannot hold (past year 9999) reads as the epoch.
fn utc(at: SystemTime) -> OffsetDateTime {
    let nanos = match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => i128::try_from(before.duration().as_nanos()).map_or(i128::MIN, |n| -n),
    };
    OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, q: Option<&str>) -> Result<Target, NameError> {
        parse_function_name(raw, q, "us-east-1", "000000000000")
    }

    fn target(name: &str, q: Option<&str>) -> Target {
        Target {
            name: name.into(),
            qualifier: q.map(Into::into),
        }
    }

    #[test]
    fn every_name_form_lambda_accepts() {
        assert_eq!(parse("fanout", None), Ok(target("fanout", None)));
        assert_eq!(parse("fanout:3", None), Ok(target("fanout", Some("3"))));
        assert_eq!(parse("fanout", Some("3")), Ok(target("fanout", Some("3"))));
        assert_eq!(
            parse("fanout:3", Some("3")),
            Ok(target("fanout", Some("3")))
        );
        assert_eq!(
            parse("000000000000:function:fanout", None),
            Ok(target("fanout", None))
        );
        assert_eq!(
            parse("000000000000:function:fanout:$LATEST", None),
            Ok(target("fanout", Some("$LATEST")))
        );
        assert_eq!(
            parse(
                "arn:aws:lambda:us-east-1:000000000000:function:fanout:1",
                None
            ),
            Ok(target("fanout", Some("1")))
        );
        assert_eq!(
            parse(
                "arn:aws:lambda:us-east-1:000000000000:function:fanout",
                Some("2")
            ),
            Ok(target("fanout", Some("2")))
        );
    }

    #[test]
    fn bad_names_are_told_apart() {
        assert_eq!(
            parse("fanout:1", Some("2")),
            Err(NameError::QualifierMismatch)
        );
        assert!(matches!(parse("", None), Err(NameError::Invalid(_))));
        assert!(matches!(
            parse("a:b:c:d:e", None),
            Err(NameError::Invalid(_))
        ));
        assert!(matches!(parse("fan out", None), Err(NameError::Invalid(_))));
        let other = "arn:aws:lambda:eu-west-1:000000000000:function:fanout:1";
        assert_eq!(parse(other, None), Err(NameError::Elsewhere(other.into())));
        assert!(matches!(
            parse("111111111111:function:fanout", None),
            Err(NameError::Elsewhere(_))
        ));
    }

    #[test]
    fn arns_and_version_order() {
        assert_eq!(
            function_arn("us-east-1", "000000000000", "f", Some("2")),
            "arn:aws:lambda:us-east-1:000000000000:function:f:2"
        );
        assert_eq!(
            function_arn("us-east-1", "000000000000", "f", None),
            "arn:aws:lambda:us-east-1:000000000000:function:f"
        );
        let mut versions = vec!["10", "9", "1", "beta", "2"];
        versions.sort_by(|a, b| version_order(a, b));
        assert_eq!(versions, vec!["1", "2", "9", "10", "beta"]);
    }

    #[test]
    fn dates_as_lambda_writes_them() {
        let at = |ms: i64| match u64::try_from(ms) {
            Ok(ms) => UNIX_EPOCH + std::time::Duration::from_millis(ms),
            Err(_) => UNIX_EPOCH - std::time::Duration::from_millis(ms.unsigned_abs()),
        };
        assert_eq!(
            last_modified(at(1_795_856_400_123)),
            "2026-11-28T09:00:00.123+0000"
        );
        assert_eq!(last_modified(at(0)), "1970-01-01T00:00:00.000+0000");
        // A leap day, and the last millisecond before the epoch.
        assert_eq!(
            last_modified(at(1_709_251_199_999)),
            "2024-02-29T23:59:59.999+0000"
        );
        assert_eq!(last_modified(at(-1)), "1969-12-31T23:59:59.999+0000");
        let name = log_stream_name("7", at(1_704_067_200_000));
        assert!(name.starts_with("2024/01/01/[7]"), "{name}");
        assert_eq!(name.len(), "2024/01/01/[7]".len() + 32, "{name}");
        assert!(
            name["2024/01/01/[7]".len()..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
        );
    }
}
