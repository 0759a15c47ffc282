//! The entries of an uncompressed zip archive (what `torch.save` writes): the central directory,
//! zip64 included, mapped to byte ranges of the file. Compressed entries are refused.

use std::collections::HashMap;
use std::ops::Range;

/// Why an archive could not be read (the caller names the file).
pub(crate) type ZipError = String;

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;

fn u16_at(b: &[u8], at: usize) -> Result<u16, ZipError> {
    at.checked_add(2)
        .and_then(|end| b.get(at..end))
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| format!("zip structure cut short at byte {at}"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, ZipError> {
    at.checked_add(4)
        .and_then(|end| b.get(at..end))
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or_else(|| format!("zip structure cut short at byte {at}"))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, ZipError> {
    at.checked_add(8)
        .and_then(|end| b.get(at..end))
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
        .ok_or_else(|| format!("zip structure cut short at byte {at}"))
}

/// Whether `bytes` starts like a zip archive (a local file header).
pub(crate) fn is_zip(bytes: &[u8]) -> bool {
    u32_at(bytes, 0) == Ok(LOCAL_SIG)
}

/// `(number of entries, offset of the central directory)` from the end records.
fn central_directory(b: &[u8]) -> Result<(u64, u64), ZipError> {
    // The end record is 22 bytes plus a comment of at most 65535 bytes.
    let lowest = b.len().saturating_sub(22 + 65_535);
    let eocd = (lowest..=b.len().saturating_sub(22))
        .rev()
        .find(|&i| u32_at(b, i) == Ok(EOCD_SIG))
        .ok_or("no end-of-central-directory record (not a zip archive, or truncated)")?;
    let entries = u64::from(u16_at(b, eocd + 10)?);
    let offset = u64::from(u32_at(b, eocd + 16)?);
    if entries != 0xFFFF && offset != 0xFFFF_FFFF {
        return Ok((entries, offset));
    }
    let locator = eocd.checked_sub(20).ok_or("zip64 locator missing")?;
    if u32_at(b, locator)? != ZIP64_LOCATOR_SIG {
        return Err("zip64 locator missing".into());
    }
    let z = usize::try_from(u64_at(b, locator + 8)?).map_err(|_| "zip64 record offset")?;
    if u32_at(b, z)? != ZIP64_EOCD_SIG {
        return Err("bad zip64 end record".into());
    }
    Ok((u64_at(b, z + 32)?, u64_at(b, z + 48)?))
}

/// Replaces 32-bit sizes/offsets saturated at `0xFFFFFFFF` by the zip64 extra field's values.
fn zip64_fields(extra: &[u8], fields: &mut [&mut u64]) -> Result<(), ZipError> {
    let mut at = 0;
    while at + 4 <= extra.len() {
        let (id, len) = (u16_at(extra, at)?, usize::from(u16_at(extra, at + 2)?));
        if id == 1 {
            let mut pos = at + 4;
            for f in fields.iter_mut().filter(|f| ***f == 0xFFFF_FFFF) {
                **f = u64_at(extra, pos)?;
                pos += 8;
            }
            return Ok(());
        }
        at += 4 + len;
    }
    Ok(())
}

/// Name → byte range of every entry of the archive `b`; every entry must be stored uncompressed.
pub(crate) fn stored_entries(b: &[u8]) -> Result<HashMap<String, Range<usize>>, ZipError> {
    let (count, offset) = central_directory(b)?;
    let mut at = usize::try_from(offset).map_err(|_| "central directory offset")?;
    let mut out = HashMap::new();
    for _ in 0..count {
        if u32_at(b, at)? != CENTRAL_SIG {
            return Err(format!("bad central directory entry at byte {at}"));
        }
        let method = u16_at(b, at + 10)?;
        let mut size = u64::from(u32_at(b, at + 20)?);
        let mut uncompressed = u64::from(u32_at(b, at + 24)?);
        let name_len = usize::from(u16_at(b, at + 28)?);
        let extra_len = usize::from(u16_at(b, at + 30)?);
        let comment_len = usize::from(u16_at(b, at + 32)?);
        let mut local = u64::from(u32_at(b, at + 42)?);
        let name_bytes = b
            .get(at + 46..at + 46 + name_len)
            .ok_or("entry name cut short")?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        let extra = b
            .get(at + 46 + name_len..at + 46 + name_len + extra_len)
            .ok_or("entry extra field cut short")?;
        zip64_fields(extra, &mut [&mut uncompressed, &mut size, &mut local])?;
        if method != 0 || size != uncompressed {
            return Err(format!(
                "entry `{name}` is compressed (method {method}); torch.save stores entries uncompressed"
            ));
        }
        let local = usize::try_from(local).map_err(|_| "entry offset")?;
        if u32_at(b, local)? != LOCAL_SIG {
            return Err(format!("entry `{name}`: bad local header"));
        }
        let header = 30 + usize::from(u16_at(b, local + 26)?) + usize::from(u16_at(b, local + 28)?);
        let start = local.checked_add(header).ok_or("entry offset overflows")?;
        let end = usize::try_from(size)
            .ok()
            .and_then(|s| start.checked_add(s))
            .filter(|&e| e <= b.len())
            .ok_or_else(|| format!("entry `{name}` runs past the end of the file"))?;
        out.insert(name, start..end);
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}
