//! The one thing keygate reads from its certificate itself: when it
//! expires (`keygate_tls_certificate_expiry_timestamp_seconds`). A few
//! lines of DER walking rather than an X.509 crate: the path to
//! `tbsCertificate.validity.notAfter` is fixed (RFC 5280 §4.1).

/// The `notAfter` of a DER certificate, in seconds since the Unix epoch;
/// `None` if the bytes are not a certificate this walk understands.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (cert, _) = element(der, 0x30)?;
    let (mut tbs, _) = element(cert, 0x30)?;
    // version [0] EXPLICIT, present from v2 on.
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs, 0xa0)?.1;
    }
    let (_, rest) = element(tbs, 0x02)?; // serialNumber
    let (_, rest) = element(rest, 0x30)?; // signature
    let (_, rest) = element(rest, 0x30)?; // issuer
    let (validity, _) = element(rest, 0x30)?;
    let (_, rest) = time(validity)?; // notBefore
    time(rest).map(|(t, _)| t)
}

/// One element with tag `tag` at the start of `input`: (its contents, what
/// follows it).
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`), as Unix seconds, and what follows it.
fn time(input: &[u8]) -> Option<(i64, &[u8])> {
    let (digits, year) = match input.first()? {
        0x17 => {
            let (v, _) = element(input, 0x17)?;
            let yy = number(v.get(..2)?)?;
            (v.get(2..)?, if yy < 50 { 2000 + yy } else { 1900 + yy })
        }
        0x18 => {
            let (v, _) = element(input, 0x18)?;
            (v.get(4..)?, number(v.get(..4)?)?)
        }
        _ => return None,
    };
    if digits.len() != 11 || digits[10] != b'Z' {
        return None;
    }
    let field = |i: usize| number(&digits[i..i + 2]);
    let (month, day) = (field(0)?, field(2)?);
    let (h, m, s) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let rest = match input.first()? {
        0x17 => element(input, 0x17)?.1,
        _ => element(input, 0x18)?.1,
    };
    Some((days * 86_400 + h * 3600 + m * 60 + s, rest))
}

fn number(d: &[u8]) -> Option<i64> {
    d.iter().try_fold(0i64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
    })
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_expiring(year: i32, month: u8, day: u8) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap_or_else(|e| panic!("{e}"));
        params.not_after = rcgen::date_time_ymd(year, month, day);
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("{e}"))
            .der()
            .to_vec()
    }

    #[test]
    fn reads_not_after_in_utc_and_generalized_time() {
        // 2027-03-01T00:00:00Z (UTCTime) and 2051-01-01 (GeneralizedTime).
        assert_eq!(not_after(&cert_expiring(2027, 3, 1)), Some(1_803_859_200));
        assert_eq!(not_after(&cert_expiring(2051, 1, 1)), Some(2_556_144_000));
        assert_eq!(not_after(&cert_expiring(2000, 2, 29)), Some(951_782_400));
    }

    #[test]
    fn anything_else_is_none_not_a_panic() {
        let good = cert_expiring(2027, 3, 1);
        assert_eq!(not_after(&[]), None);
        assert_eq!(not_after(b"not a certificate"), None);
        for cut in [1, 10, 100, good.len() / 2] {
            assert_eq!(not_after(&good[..cut]), None, "cut at {cut}");
        }
        let mut bad = good.clone();
        bad[0] = 0x31;
        assert_eq!(not_after(&bad), None);
    }
}
