//! Method arguments by name, parsed from `name=value` lists.

use std::collections::BTreeMap;
use std::str::FromStr;

use inseq_core::{Error, Result};

/// Arguments of an attribution method (`n_steps=16`, `method=riemann_middle`...).
///
/// Methods read what they understand with [`MethodArgs::take`] and reject
/// leftovers with [`MethodArgs::finish`], so a misspelled argument is an error.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodArgs {
    values: BTreeMap<String, String>,
}

impl MethodArgs {
    /// Parses `name=value,name=value`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut values = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                Error::invalid_arg(
                    "attribution arguments",
                    format!("`{part}` is not name=value"),
                )
            })?;
            values.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(Self { values })
    }

    /// Sets one argument.
    pub fn with(mut self, name: &str, value: impl ToString) -> Self {
        self.values.insert(name.to_string(), value.to_string());
        self
    }

    /// Removes and parses `name`, or returns `default` when absent.
    pub fn take<T: FromStr>(&mut self, name: &str, default: T) -> Result<T> {
        match self.values.remove(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                Error::invalid_arg(
                    name,
                    format!("cannot parse `{v}` as {}", std::any::type_name::<T>()),
                )
            }),
        }
    }

    /// Removes and parses an optional `name`.
    pub fn take_opt<T: FromStr>(&mut self, name: &str) -> Result<Option<T>> {
        match self.values.remove(name) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                Error::invalid_arg(
                    name,
                    format!("cannot parse `{v}` as {}", std::any::type_name::<T>()),
                )
            }),
        }
    }

    /// Removes and parses a size-like `name` (`n_steps`, `n_samples`...) that must lie in
    /// `1..=max`; `max` bounds the work and memory one call may take (see `docs/reliability.md`).
    pub fn take_size(&mut self, name: &str, default: usize, max: usize) -> Result<usize> {
        let value = self.take(name, default)?;
        check_size(name, value, max)?;
        Ok(value)
    }

    /// Errors if arguments remain that `method` did not use.
    pub fn finish(self, method: &str) -> Result<()> {
        if let Some(k) = self.values.keys().next() {
            return Err(Error::invalid_arg(
                k,
                format!("not an argument of `{method}`"),
            ));
        }
        Ok(())
    }

    /// The arguments as JSON (for result metadata).
    pub fn to_json(&self) -> BTreeMap<String, String> {
        self.values.clone()
    }
}

/// Errors unless `1 <= value <= max` for the size-like argument `name`, saying how to proceed.
pub fn check_size(name: &str, value: usize, max: usize) -> Result<()> {
    if value == 0 {
        return Err(Error::invalid_arg(name, "must be at least 1"));
    }
    if value > max {
        return Err(Error::invalid_arg(
            name,
            format!(
                "{value} is over the limit of {max}, which bounds the work and memory of one \
                 call; use a value up to {max} (or split the inputs into several calls)"
            ),
        ));
    }
    Ok(())
}
