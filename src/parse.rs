//! Parsers for option values that several commands share (`--window
//! START..END`, `--shard I/N`). Errors are plain strings, as clap's
//! `value_parser` and `FromStr` want them.

/// Two whole numbers around `sep` (spaces around each allowed): `form` names
/// the expected shape in the error (`START..END`), `names` each number.
pub(crate) fn usize_pair(
    s: &str,
    sep: &str,
    form: &str,
    names: [&str; 2],
) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once(sep)
        .ok_or_else(|| format!("expected {form}, got `{s}`"))?;
    let number = |x: &str, name: &str| -> Result<usize, String> {
        x.trim().parse().map_err(|_| format!("bad {name} in `{s}`"))
    };
    Ok((number(a, names[0])?, number(b, names[1])?))
}

/// `--window START..END`: positions `START` to `END - 1`, so `END > START`.
pub fn window(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = usize_pair(s, "..", "START..END", ["START", "END"])?;
    if b <= a {
        return Err(format!("END must be greater than START in `{s}`"));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        assert_eq!(window("3..9"), Ok((3, 9)));
        assert_eq!(window(" 3 .. 9 "), Ok((3, 9)));
        assert_eq!(window("3"), Err("expected START..END, got `3`".into()));
        assert_eq!(window("a..9"), Err("bad START in `a..9`".into()));
        assert_eq!(window("3..b"), Err("bad END in `3..b`".into()));
        assert_eq!(
            window("9..3"),
            Err("END must be greater than START in `9..3`".into())
        );
    }
}
