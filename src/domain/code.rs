//! Coupon code generation.

use std::collections::HashSet;

use rand::{CryptoRng, RngCore};

use crate::domain::ids::CodePrefix;

/// Characters a code is made of: digits and capitals without the easily
/// confused 0, O, 1, I and L. 31 symbols, so 12 of them carry ~59 bits.
pub const CODE_ALPHABET: &[u8; 31] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";

/// Random characters after the prefix unless configured otherwise.
pub const DEFAULT_CODE_LENGTH: usize = 12;

/// Largest multiple of 31 that fits a byte: bytes at or above it are
/// rejected so that every symbol is exactly equally likely.
const REJECT_FROM: u8 = (256 / CODE_ALPHABET.len() * CODE_ALPHABET.len()) as u8;

/// The longest code accepted from outside (a message): a prefix and far
/// more random characters than coupond draws.
pub const MAX_CODE_LEN: usize = 64;

/// Checks a code that comes from outside (a Kafka message) by the rules
/// codes are made by: 8 to 64 characters of A-Z, 0-9 and '-' (a prefix's
/// characters; the random part's alphabet is a subset).
pub fn check_code(code: &str) -> Result<(), String> {
    if !(8..=MAX_CODE_LEN).contains(&code.len()) {
        return Err(format!("must be 8 to {MAX_CODE_LEN} characters"));
    }
    if !code
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may contain only A-Z, 0-9 and '-'".into());
    }
    Ok(())
}

/// Draws codes from a CSPRNG. Generic over the RNG so tests can seed one;
/// production uses `StdRng::from_os_rng()` (ChaCha12 seeded from the OS).
pub struct CodeGenerator<R> {
    rng: R,
    length: usize,
    buf: Vec<u8>,
    pos: usize,
}

impl<R: RngCore + CryptoRng> CodeGenerator<R> {
    pub fn new(rng: R, length: usize) -> Self {
        assert!(length >= 8, "codes shorter than 8 characters are guessable");
        Self {
            rng,
            length,
            buf: vec![0; 4096],
            pos: 4096,
        }
    }

    fn next_symbol(&mut self) -> u8 {
        loop {
            if self.pos == self.buf.len() {
                // Refill in bulk: one RNG call per 4 KiB instead of per byte.
                self.rng.fill_bytes(&mut self.buf);
                self.pos = 0;
            }
            let b = self.buf[self.pos];
            self.pos += 1;
            if b < REJECT_FROM {
                return CODE_ALPHABET[(b % CODE_ALPHABET.len() as u8) as usize];
            }
        }
    }

    /// One code: `prefix` followed by `length` random symbols.
    pub fn code(&mut self, prefix: &CodePrefix) -> String {
        let mut s = String::with_capacity(prefix.as_str().len() + self.length);
        s.push_str(prefix.as_str());
        for _ in 0..self.length {
            s.push(self.next_symbol() as char);
        }
        s
    }

    /// `n` codes, distinct from each other and from everything in `taken`
    /// (which they are added to). A collision is drawn again, never reported.
    pub fn unique_codes(
        &mut self,
        prefix: &CodePrefix,
        n: usize,
        taken: &mut HashSet<String>,
    ) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let c = self.code(prefix);
            if taken.insert(c.clone()) {
                out.push(c);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn codes_use_only_the_unambiguous_alphabet_and_the_requested_length() {
        let mut g = CodeGenerator::new(rand::rng(), DEFAULT_CODE_LENGTH);
        let prefix = CodePrefix::parse("SALE-").unwrap();
        for _ in 0..10_000 {
            let c = g.code(&prefix);
            let body = c.strip_prefix("SALE-").expect("prefix kept");
            assert_eq!(body.len(), 12);
            for ch in body.bytes() {
                assert!(CODE_ALPHABET.contains(&ch), "{c}");
                assert!(!b"0O1IL".contains(&ch), "{c}");
            }
        }
    }

    #[test]
    fn one_million_codes_are_unique() {
        let mut g = CodeGenerator::new(rand::rng(), DEFAULT_CODE_LENGTH);
        let mut taken = HashSet::new();
        let codes = g.unique_codes(&CodePrefix::default(), 1_000_000, &mut taken);
        assert_eq!(codes.len(), 1_000_000);
        let distinct: HashSet<&String> = codes.iter().collect();
        assert_eq!(distinct.len(), 1_000_000);
    }

    #[test]
    fn collisions_are_redrawn_not_returned() {
        // Two generators from the same seed produce the same sequence: the
        // second must skip every code the first already took.
        let mut a = CodeGenerator::new(StdRng::seed_from_u64(7), 8);
        let mut b = CodeGenerator::new(StdRng::seed_from_u64(7), 8);
        let p = CodePrefix::default();
        let mut taken = HashSet::new();
        let first = a.unique_codes(&p, 100, &mut taken);
        let second = b.unique_codes(&p, 100, &mut taken);
        assert!(second.iter().all(|c| !first.contains(c)));
        assert_eq!(taken.len(), 200);
    }

    #[test]
    fn every_symbol_is_drawn() {
        let mut g = CodeGenerator::new(StdRng::seed_from_u64(1), 12);
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            seen.extend(g.code(&CodePrefix::default()).bytes());
        }
        assert_eq!(seen.len(), CODE_ALPHABET.len());
    }
}
