//! The two tokenizations of the shipped corpus: raw bytes (vocabulary 256) for the
//! CPU tracks, and GPT-2 BPE (r50k ranks from `tiktoken-rs`) for the GPT-2 path.

pub use crate::track::{TokenizerKind, GPT2_EOT};
use anyhow::Result;

/// A ready tokenizer (the BPE one holds its rank table).
pub enum Tokenizer {
    Bytes,
    Gpt2(Box<tiktoken_rs::CoreBPE>),
}

impl Tokenizer {
    pub fn new(kind: TokenizerKind) -> Result<Tokenizer> {
        Ok(match kind {
            TokenizerKind::Bytes => Tokenizer::Bytes,
            TokenizerKind::Gpt2 => Tokenizer::Gpt2(Box::new(tiktoken_rs::r50k_base()?)),
        })
    }

    /// Tokens of one whole document, with its document separator.
    pub fn encode_document(&self, text: &str) -> Vec<u16> {
        match self {
            Tokenizer::Bytes => text.bytes().map(u16::from).collect(),
            Tokenizer::Gpt2(bpe) => {
                let mut out = vec![GPT2_EOT];
                out.extend(bpe.encode_ordinary(text).into_iter().map(|t| t as u16));
                out
            }
        }
    }

    /// The bytes the tokens stand for (end-of-text and ids past the
    /// tokenizer's vocabulary, such as padding, decode to none).
    pub fn decode(&self, tokens: &[u16]) -> Result<Vec<u8>> {
        match self {
            Tokenizer::Bytes => Ok(tokens
                .iter()
                .filter(|&&t| t < 256)
                .map(|&t| t as u8)
                .collect()),
            Tokenizer::Gpt2(bpe) => {
                let ids: Vec<u32> = tokens
                    .iter()
                    .filter(|&&t| t < GPT2_EOT)
                    .map(|&t| t as u32)
                    .collect();
                bpe.decode_bytes(&ids).map_err(|e| {
                    anyhow::anyhow!("GPT-2 decoding failed: unknown token {}", e.token)
                })
            }
        }
    }

    /// Number of text bytes the tokens decode to (the end-of-text token decodes to none).
    pub fn decoded_bytes(&self, tokens: &[u16]) -> Result<u64> {
        match self {
            Tokenizer::Bytes => Ok(tokens.len() as u64),
            Tokenizer::Gpt2(bpe) => {
                let ids: Vec<u32> = tokens
                    .iter()
                    .filter(|&&t| t != GPT2_EOT)
                    .map(|&t| t as u32)
                    .collect();
                // Byte-level decoding: a token split mid-character still counts its bytes.
                let bytes = bpe.decode_bytes(&ids).map_err(|e| {
                    anyhow::anyhow!("GPT-2 decoding failed: unknown token {}", e.token)
                })?;
                Ok(bytes.len() as u64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_gives_back_the_text_for_both_tokenizers() {
        let text = "To be, or not to be: that is the question.";
        for kind in [TokenizerKind::Bytes, TokenizerKind::Gpt2] {
            let t = Tokenizer::new(kind).unwrap();
            let ids = t.encode_document(text);
            assert_eq!(t.decode(&ids).unwrap(), text.as_bytes(), "{kind:?}");
        }
        // GPT-2: end-of-text and padding ids decode to nothing.
        let t = Tokenizer::new(TokenizerKind::Gpt2).unwrap();
        assert!(t.decode(&[GPT2_EOT, 50300]).unwrap().is_empty());
    }
}
