//! A window's groups as checkpoint entries: one entry per key group, whose
//! value holds every group (key and accumulators) of that key group in the
//! window, so a restore at another parallelism takes whole entries.
//!
//! Value format 1: `[1u8][n: u32 LE]`, then per group its key (`Int64`
//! store: `[0|1 u8][i64 LE]`, null or value; row store: `[len: u32 LE][row
//! bytes]`) and each aggregate's accumulator (`Acc::export`). Snapshot files
//! carry checksums, so damaged bytes are caught before they get here; a
//! value that still does not parse is an error, never a panic.

use super::{KeyStore, WindowState, find_or_insert, set_dirty};
use crate::operators::window::accumulators::take;
use arrow::array::{ArrayRef, Int64Array};
use arrow::row::RowConverter;
use eddy_sdk::plan::hash::hash_columns;
use std::sync::Arc;

const FORMAT: u8 = 1;

/// The key groups set in a bitset of `set_dirty`, in order.
fn key_groups_in(bits: &[u64]) -> Vec<u16> {
    let mut out = Vec::new();
    for (w, &bits) in bits.iter().enumerate() {
        let mut b = bits;
        while b != 0 {
            out.push((w * 64 + b.trailing_zeros() as usize) as u16);
            b &= b - 1;
        }
    }
    out
}

impl WindowState {
    /// The groups of each of `key_groups` (ascending) that has any, in
    /// group order: one pass over the groups with a lookup table, not a map
    /// lookup per group (a window can hold millions).
    pub fn groups_of_key_groups(&self, key_groups: &[u16]) -> Vec<(u16, Vec<u32>)> {
        let Some(&last) = key_groups.last() else {
            return Vec::new();
        };
        let mut slot = vec![u32::MAX; usize::from(last) + 1];
        for (i, &kg) in key_groups.iter().enumerate() {
            slot[usize::from(kg)] = i as u32;
        }
        let mut out: Vec<(u16, Vec<u32>)> = key_groups.iter().map(|&kg| (kg, Vec::new())).collect();
        for (g, &kg) in self.key_groups.iter().enumerate() {
            if let Some(&i) = slot.get(usize::from(kg))
                && i != u32::MAX
            {
                out[i as usize].1.push(g as u32);
            }
        }
        out.retain(|(_, groups)| !groups.is_empty());
        out
    }

    /// The key groups updated since the last call, which forgets them.
    pub fn take_dirty_key_groups(&mut self) -> Vec<u16> {
        key_groups_in(&std::mem::take(&mut self.dirty))
    }

    /// The key groups that have groups in this window, in order.
    pub fn key_groups_present(&self) -> Vec<u16> {
        let mut bits = Vec::new();
        for &kg in &self.key_groups {
            set_dirty(&mut bits, kg);
        }
        key_groups_in(&bits)
    }

    /// Marks every key group present as updated (the window moves to
    /// another state name, so all of its entries are written again).
    pub fn mark_all_dirty(&mut self) {
        for &kg in &self.key_groups {
            set_dirty(&mut self.dirty, kg);
        }
    }

    /// The entry value of `groups` (all of one key group).
    pub fn encode(&self, groups: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + groups.len() * 24);
        out.push(FORMAT);
        out.extend_from_slice(&(groups.len() as u32).to_le_bytes());
        for &g in groups {
            let g = g as usize;
            match &self.keys {
                KeyStore::Int64(keys) => match keys[g] {
                    None => out.extend_from_slice(&[0; 9]),
                    Some(k) => {
                        out.push(1);
                        out.extend_from_slice(&k.to_le_bytes());
                    }
                },
                KeyStore::Rows(rows) => {
                    let bytes = rows.row(g).data();
                    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                    out.extend_from_slice(bytes);
                }
            }
            for acc in &self.accs {
                acc.export(g, &mut out);
            }
        }
        out
    }

    /// Adds the groups of an entry value of key group `kg` (a restore);
    /// `rows` is the operator's converter when keys are in row format.
    pub fn decode_into(
        &mut self,
        kg: u16,
        value: &[u8],
        rows: Option<&RowConverter>,
    ) -> Result<(), String> {
        let short = || "the value ends early".to_string();
        let mut input = value;
        let format = take::<1>(&mut input).ok_or_else(short)?[0];
        if format != FORMAT {
            return Err(format!(
                "unknown value format {format} (this build reads {FORMAT})"
            ));
        }
        let n = u32::from_le_bytes(take(&mut input).ok_or_else(short)?) as usize;
        // Keys first (to hash them as one column), then accumulators.
        let mut int_keys: Vec<Option<i64>> = Vec::new();
        let mut row_keys: Vec<&[u8]> = Vec::new();
        let mut accs: Vec<&[u8]> = Vec::with_capacity(n.min(value.len()));
        for _ in 0..n {
            match &self.keys {
                KeyStore::Int64(_) => {
                    let tag = take::<1>(&mut input).ok_or_else(short)?[0];
                    let k = i64::from_le_bytes(take(&mut input).ok_or_else(short)?);
                    int_keys.push((tag != 0).then_some(k));
                }
                KeyStore::Rows(_) => {
                    let len = u32::from_le_bytes(take(&mut input).ok_or_else(short)?) as usize;
                    let (key, rest) = input.split_at_checked(len).ok_or_else(short)?;
                    row_keys.push(key);
                    input = rest;
                }
            }
            let len: usize = self.accs.iter().map(|a| a.encoded_len()).sum();
            let (bytes, rest) = input.split_at_checked(len).ok_or_else(short)?;
            accs.push(bytes);
            input = rest;
        }
        if !input.is_empty() {
            return Err(format!("{} bytes after the last group", input.len()));
        }
        let mut hashes = Vec::new();
        let cols: Vec<ArrayRef> = match (&self.keys, rows) {
            (KeyStore::Int64(_), _) => vec![Arc::new(Int64Array::from(int_keys.clone()))],
            (KeyStore::Rows(_), Some(conv)) => {
                let parser = conv.parser();
                conv.convert_rows(row_keys.iter().map(|b| parser.parse(b)))
                    .map_err(|e| format!("cannot decode the keys: {e}"))?
            }
            (KeyStore::Rows(_), None) => return Err("row-format keys need their converter".into()),
        };
        hash_columns(&cols, &mut hashes).map_err(|e| format!("cannot hash the keys: {e}"))?;
        for i in 0..n {
            let g = match &mut self.keys {
                KeyStore::Int64(stored) => {
                    let key = int_keys[i];
                    let g = find_or_insert(&mut self.heads, &mut self.next, hashes[i], |g| {
                        stored[g as usize] == key
                    });
                    if g as usize == stored.len() {
                        stored.push(key);
                        self.key_groups.push(kg);
                    }
                    g
                }
                KeyStore::Rows(stored) => {
                    let parser = rows.map(RowConverter::parser).ok_or("no converter")?;
                    let key = parser.parse(row_keys[i]);
                    let g = find_or_insert(&mut self.heads, &mut self.next, hashes[i], |g| {
                        stored.row(g as usize) == key
                    });
                    if g as usize == stored.num_rows() {
                        stored.push(key);
                        self.key_groups.push(kg);
                    }
                    g
                }
            };
            let mut bytes = accs[i];
            for acc in &mut self.accs {
                acc.import(g as usize, &mut bytes).ok_or_else(short)?;
            }
        }
        Ok(())
    }
}
