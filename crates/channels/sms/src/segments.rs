//! How many SMS segments a text takes, as carriers bill it.

/// The GSM 03.38 default alphabet: one septet each.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The extension table: an escape septet plus one, so two each.
const GSM7_EXTENSION: &str = "\u{000C}^{}\\[~]|€";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        }
    }
}

/// The encoding a text needs and how many segments it takes: GSM-7 fits 160 septets in one
/// segment and 153 per segment when split; anything outside GSM-7 (Cyrillic, emoji) goes as
/// UCS-2, 70 UTF-16 units in one segment and 67 per segment when split.
pub fn segments(text: &str) -> (Encoding, usize) {
    let septets: Option<usize> = text
        .chars()
        .map(|c| {
            if GSM7_BASIC.contains(c) {
                Some(1)
            } else if GSM7_EXTENSION.contains(c) {
                Some(2)
            } else {
                None
            }
        })
        .sum();
    let (encoding, units, single, multi) = match septets {
        Some(n) => (Encoding::Gsm7, n, 160, 153),
        None => (Encoding::Ucs2, text.encode_utf16().count(), 70, 67),
    };
    let count = if units <= single {
        1
    } else {
        units.div_ceil(multi)
    };
    (encoding, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin_text_is_gsm7_at_160_per_segment_and_153_when_split() {
        assert_eq!(segments(&"a".repeat(160)), (Encoding::Gsm7, 1));
        assert_eq!(segments(&"a".repeat(161)), (Encoding::Gsm7, 2));
        assert_eq!(segments(&"a".repeat(306)), (Encoding::Gsm7, 2));
        assert_eq!(segments(&"a".repeat(307)), (Encoding::Gsm7, 3));
        assert_eq!(segments(""), (Encoding::Gsm7, 1));
    }

    #[test]
    fn extension_characters_take_two_septets() {
        assert_eq!(segments(&"€".repeat(80)), (Encoding::Gsm7, 1));
        assert_eq!(
            segments(&format!("{}{{", "a".repeat(159))),
            (Encoding::Gsm7, 2)
        );
    }

    #[test]
    fn cyrillic_and_emoji_are_ucs2_at_70_per_segment_and_67_when_split() {
        assert_eq!(segments(&"ж".repeat(70)), (Encoding::Ucs2, 1));
        assert_eq!(segments(&"ж".repeat(71)), (Encoding::Ucs2, 2));
        assert_eq!(segments(&"ж".repeat(134)), (Encoding::Ucs2, 2));
        assert_eq!(segments(&"ж".repeat(135)), (Encoding::Ucs2, 3));
        // An emoji is two UTF-16 units.
        assert_eq!(segments(&"🙂".repeat(35)), (Encoding::Ucs2, 1));
        assert_eq!(
            segments(&format!("{}🙂", "a".repeat(69))),
            (Encoding::Ucs2, 2)
        );
    }
}
