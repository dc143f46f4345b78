//! Restate's request identity keys as a deployment is given them: `FANOUT_IDENTITY_KEYS`, one
//! or more `publickeyv1_…` keys, comma-separated (several while a key is rotated). The handler
//! refuses to start on a list it cannot use, and `fanout deploy` refuses to set one, with the
//! same words.

/// The env var that lists the keys; unset, the handler serves unsigned requests.
pub const IDENTITY_KEYS_ENV: &str = "FANOUT_IDENTITY_KEYS";

/// How Restate writes a public key: this prefix, then base58 of its 32 bytes.
pub const PUBLIC_KEY_PREFIX: &str = "publickeyv1_";

/// The keys of a `FANOUT_IDENTITY_KEYS` value, blanks around commas ignored; an error when it
/// holds none. Whether each key is a usable one is for the verifier to say
/// ([`not_a_key`] words its refusal).
pub fn key_list(raw: &str) -> Result<Vec<&str>, String> {
    let keys: Vec<&str> = raw
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    if keys.is_empty() {
        return Err(format!(
            "{IDENTITY_KEYS_ENV} is set but holds no key; give the {PUBLIC_KEY_PREFIX}… key \
             restate-server prints at startup (several: comma-separated), or unset it to serve \
             unsigned requests"
        ));
    }
    Ok(keys)
}

/// Why key `index` (from 0) of `count` cannot be used, as an error message.
pub fn not_a_key(index: usize, count: usize, key: &str, why: &str) -> String {
    format!(
        "{IDENTITY_KEYS_ENV}: key {} of {count} ({key:?}) is not a Restate request identity key: \
         {why}; give the {PUBLIC_KEY_PREFIX}… key restate-server prints at startup (several: \
         comma-separated)",
        index + 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_comma_separated_and_never_empty() {
        assert_eq!(key_list(" a , b,").unwrap(), ["a", "b"]);
        assert!(key_list(" , ").unwrap_err().contains("holds no key"));
        assert!(not_a_key(1, 2, "x", "too short").contains("key 2 of 2"));
    }
}
