//! The `notAfter` date of an X.509 certificate, read with a minimal DER walk (RFC 5280 §4.1):
//! rustls and webpki check validity only against trust anchors and do not expose the date.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why the date could not be read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("not a DER X.509 certificate ({0})")]
pub struct Malformed(&'static str);

const SEQUENCE: u8 = 0x30;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// When the certificate stops being valid.
pub fn not_after(cert_der: &[u8]) -> Result<SystemTime, Malformed> {
    let (cert, _) = element(cert_der, SEQUENCE, "certificate")?;
    let (mut tbs, _) = element(cert, SEQUENCE, "tbsCertificate")?;
    if tbs.first() == Some(&VERSION) {
        tbs = any(tbs, "version")?.1;
    }
    // serialNumber, signature AlgorithmIdentifier, issuer Name; then validity.
    for field in ["serialNumber", "signature", "issuer"] {
        tbs = any(tbs, field)?.1;
    }
    let (validity, _) = element(tbs, SEQUENCE, "validity")?;
    let (_, validity) = any(validity, "notBefore")?;
    let (tag, value, _) = tlv(validity, "notAfter")?;
    let time = match tag {
        UTC_TIME => utc_time(value),
        GENERALIZED_TIME => generalized_time(value),
        _ => None,
    };
    time.ok_or(Malformed("notAfter is not a time"))
}

/// The value of an element with `tag`, and the bytes after it.
fn element<'a>(
    der: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), Malformed> {
    match tlv(der, what)? {
        (t, value, rest) if t == tag => Ok((value, rest)),
        _ => Err(Malformed(what)),
    }
}

/// Any one element: its value and the bytes after it.
fn any<'a>(der: &'a [u8], what: &'static str) -> Result<(&'a [u8], &'a [u8]), Malformed> {
    tlv(der, what).map(|(_, value, rest)| (value, rest))
}

/// Tag, value and rest of one DER element (single-byte tags, definite lengths).
fn tlv<'a>(der: &'a [u8], what: &'static str) -> Result<(u8, &'a [u8], &'a [u8]), Malformed> {
    let bad = Malformed(what);
    let (&tag, rest) = der.split_first().ok_or(bad.clone())?;
    let (&first, mut rest) = rest.split_first().ok_or(bad.clone())?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || rest.len() < octets {
            return Err(bad);
        }
        let (len_bytes, after) = rest.split_at(octets);
        rest = after;
        len_bytes
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b))
    };
    if rest.len() < len {
        return Err(bad);
    }
    let (value, rest) = rest.split_at(len);
    Ok((tag, value, rest))
}

/// `YYMMDDHHMMSSZ`; years 50-99 are 19xx (RFC 5280 §4.1.2.5.1).
fn utc_time(v: &[u8]) -> Option<SystemTime> {
    if v.len() != 13 || v[12] != b'Z' {
        return None;
    }
    let yy = digits(&v[0..2])?;
    let year = if yy >= 50 { 1900 + yy } else { 2000 + yy };
    civil(year, &v[2..12])
}

/// `YYYYMMDDHHMMSSZ` (RFC 5280 §4.1.2.5.2).
fn generalized_time(v: &[u8]) -> Option<SystemTime> {
    if v.len() != 15 || v[14] != b'Z' {
        return None;
    }
    civil(digits(&v[0..4])?, &v[4..14])
}

/// `MMDDHHMMSS` of `year` as a point in time.
fn civil(year: u64, rest: &[u8]) -> Option<SystemTime> {
    let [month, day, hour, minute, second] = [0, 2, 4, 6, 8].map(|i| digits(&rest[i..i + 2]));
    let (month, day) = (month?, day?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || year < 1970 {
        return None;
    }
    let seconds =
        days_since_epoch(year, month, day) * 86_400 + hour? * 3600 + minute? * 60 + second?;
    Some(UNIX_EPOCH + Duration::from_secs(seconds))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_since_epoch(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(b: &[u8]) -> Option<u64> {
    b.iter().try_fold(0u64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn utc_time_before_2050_is_20xx() {
        // 2030-01-02 03:04:05 UTC
        assert_eq!(utc_time(b"300102030405Z").map(secs), Some(1_893_553_445));
    }

    #[test]
    fn utc_time_from_50_is_19xx() {
        assert_eq!(utc_time(b"700101000000Z").map(secs), Some(0));
    }

    #[test]
    fn generalized_time_reads_four_digit_years() {
        // 2100-03-01 00:00:00 UTC, past a non-leap century year.
        assert_eq!(
            generalized_time(b"21000301000000Z").map(secs),
            Some(4_107_542_400)
        );
    }

    #[test]
    fn a_local_time_without_z_is_refused() {
        assert_eq!(utc_time(b"300102030405+"), None);
    }

    #[test]
    fn a_truncated_certificate_is_malformed() {
        assert_eq!(
            not_after(&[0x30, 0x82, 0x01]),
            Err(Malformed("certificate"))
        );
    }

    #[test]
    fn reads_not_after_of_a_minimal_tbs_certificate() {
        // SEQUENCE { SEQUENCE { [0] {INTEGER 2}, INTEGER 1, SEQUENCE {}, SEQUENCE {},
        //   SEQUENCE { UTCTime 200101000000Z, UTCTime 300102030405Z } } }
        let mut validity = vec![0x17, 13];
        validity.extend_from_slice(b"200101000000Z");
        validity.extend_from_slice(&[0x17, 13]);
        validity.extend_from_slice(b"300102030405Z");
        let mut tbs = vec![0xa0, 3, 0x02, 1, 2, 0x02, 1, 1, 0x30, 0, 0x30, 0, 0x30];
        tbs.push(validity.len() as u8);
        tbs.extend_from_slice(&validity);
        let mut cert = vec![0x30, tbs.len() as u8];
        cert.extend_from_slice(&tbs);
        let mut der = vec![0x30, cert.len() as u8];
        der.extend_from_slice(&cert);
        assert_eq!(not_after(&der).map(secs), Ok(1_893_553_445));
    }
}
