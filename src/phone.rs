//! Destination phone numbers: strict input check, validity from libphonenumber's
//! metadata (the `phonenumber` crate), and the forms the dial template needs.
//!
//! The character check comes first and is ours on purpose: libphonenumber's
//! parser is built for humans and happily reads letters, spaces and
//! punctuation, while our API takes only `+`/`00` and digits, so nothing but
//! digits can ever reach an AMI header.

use std::fmt;

use phonenumber::country::Id;
use serde::Deserialize;

/// E.164 allows at most 15 digits (country code included).
pub const MAX_E164_DIGITS: usize = 15;

/// A country whose national numbers are accepted without a country code.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Country(Id);

impl Country {
    /// `"PK"` -> Pakistan. Case-insensitive ISO 3166-1 alpha-2.
    pub fn parse(code: &str) -> Result<Country, String> {
        code.to_ascii_uppercase()
            .parse::<Id>()
            .map(Country)
            .map_err(|_| format!("unknown country code `{code}` (expected ISO 3166-1 alpha-2, e.g. \"PK\")"))
    }

    /// The two-letter code.
    pub fn code(&self) -> &str {
        self.0.as_ref()
    }

    /// Its international calling code (`92` for PK, `1` for US and CA alike).
    pub fn calling_code(&self) -> Option<u16> {
        phonenumber::metadata::DATABASE.by_id(self.code()).map(|m| m.country_code())
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Country {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Country::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What kind of line a number is, as libphonenumber's numbering plans say
/// (its `PhoneNumberType`); written in snake_case in the configuration
/// (`[phone] refused_number_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberType {
    /// A fixed line.
    FixedLine,
    /// A mobile phone.
    Mobile,
    /// Either; some plans (e.g. the USA's) do not tell them apart.
    FixedLineOrMobile,
    /// Freephone.
    TollFree,
    /// Premium rate: the caller pays the callee's price (toll fraud's favourite).
    PremiumRate,
    /// Shared cost between caller and callee.
    SharedCost,
    /// A personal number, routed on to wherever its owner says.
    PersonalNumber,
    /// Voice over IP.
    Voip,
    /// A pager.
    Pager,
    /// A universal access ("company") number.
    Uan,
    /// An emergency number.
    Emergency,
    /// Voicemail access.
    Voicemail,
    /// A short code.
    ShortCode,
    /// Standard rate.
    StandardRate,
    /// A carrier-specific number.
    Carrier,
    /// Not reachable from abroad.
    NoInternational,
    /// Valid, but of no type the plan names.
    Unknown,
}

impl NumberType {
    /// The snake_case name, as in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            NumberType::FixedLine => "fixed_line",
            NumberType::Mobile => "mobile",
            NumberType::FixedLineOrMobile => "fixed_line_or_mobile",
            NumberType::TollFree => "toll_free",
            NumberType::PremiumRate => "premium_rate",
            NumberType::SharedCost => "shared_cost",
            NumberType::PersonalNumber => "personal_number",
            NumberType::Voip => "voip",
            NumberType::Pager => "pager",
            NumberType::Uan => "uan",
            NumberType::Emergency => "emergency",
            NumberType::Voicemail => "voicemail",
            NumberType::ShortCode => "short_code",
            NumberType::StandardRate => "standard_rate",
            NumberType::Carrier => "carrier",
            NumberType::NoInternational => "no_international",
            NumberType::Unknown => "unknown",
        }
    }

    fn of(kind: phonenumber::Type) -> NumberType {
        use phonenumber::Type;
        match kind {
            Type::FixedLine => NumberType::FixedLine,
            Type::Mobile => NumberType::Mobile,
            Type::FixedLineOrMobile => NumberType::FixedLineOrMobile,
            Type::TollFree => NumberType::TollFree,
            Type::PremiumRate => NumberType::PremiumRate,
            Type::SharedCost => NumberType::SharedCost,
            Type::PersonalNumber => NumberType::PersonalNumber,
            Type::Voip => NumberType::Voip,
            Type::Pager => NumberType::Pager,
            Type::Uan => NumberType::Uan,
            Type::Emergency => NumberType::Emergency,
            Type::Voicemail => NumberType::Voicemail,
            Type::ShortCode => NumberType::ShortCode,
            Type::StandardRate => NumberType::StandardRate,
            Type::Carrier => NumberType::Carrier,
            Type::NoInternational => NumberType::NoInternational,
            Type::Unknown => NumberType::Unknown,
        }
    }
}

/// A valid destination, kept in the three forms dial templates use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneNumber {
    e164: String,
    national: String,
    country: Option<Country>,
    kind: NumberType,
}

/// Why a number was refused; the text is shown to the API caller after
/// `Bad Request: number `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    /// Something other than an optional `+` / `00` prefix and digits.
    #[error("must contain only digits, optionally prefixed by + or 00")]
    Characters,
    /// More digits than E.164 allows.
    #[error("has more than {MAX_E164_DIGITS} digits")]
    TooLong,
    /// Well-formed but no valid number by the numbering plan.
    #[error("is not a valid phone number")]
    Invalid,
    /// After `+`/`00`, a national trunk prefix (`+92 0300...`): E.164 has none.
    #[error("is not in international form: no trunk prefix 0 after the country code")]
    TrunkPrefix,
}

impl PhoneNumber {
    /// Reads a number as an API caller sends it: national (`03001234567`),
    /// national without trunk prefix (`3001234567`), with country code
    /// (`923001234567`), E.164 (`+923001234567`) or with the `00` prefix
    /// (`00923001234567`). Other countries must come with a country code.
    pub fn parse(input: &str, default_country: Country) -> Result<PhoneNumber, NumberError> {
        let (international, digits) = if let Some(rest) = input.strip_prefix('+') {
            (true, rest)
        } else if let Some(rest) = input.strip_prefix("00") {
            (true, rest)
        } else {
            (false, input)
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NumberError::Characters);
        }
        if digits.len() > MAX_E164_DIGITS {
            return Err(NumberError::TooLong);
        }
        let parsed = if international {
            phonenumber::parse(None, format!("+{digits}"))
        } else {
            phonenumber::parse(Some(default_country.0), digits)
        }
        .map_err(|_| NumberError::Invalid)?;
        if !phonenumber::is_valid(&parsed) {
            return Err(NumberError::Invalid);
        }
        let e164 = parsed.format().mode(phonenumber::Mode::E164).to_string();
        let national: String = parsed
            .format()
            .mode(phonenumber::Mode::National)
            .to_string()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        // libphonenumber quietly drops a trunk `0` after the country code;
        // E.164 never has one, and a client that sends it has a bug to know about.
        if international && e164[1..] != *digits {
            return Err(NumberError::TrunkPrefix);
        }
        // Belt and braces: whatever the formatter does, only digits leave here.
        if !e164.starts_with('+') || !e164[1..].bytes().all(|b| b.is_ascii_digit()) || national.is_empty() {
            return Err(NumberError::Invalid);
        }
        let country = parsed.country().id().map(Country);
        let kind = NumberType::of(parsed.number_type(&phonenumber::metadata::DATABASE));
        Ok(PhoneNumber { e164, national, country, kind })
    }

    /// `+923001234567`
    pub fn e164(&self) -> &str {
        &self.e164
    }

    /// `923001234567`
    pub fn digits(&self) -> &str {
        &self.e164[1..]
    }

    /// The country the number belongs to by the numbering plan; `None` for
    /// non-geographic numbers (`+800`, `+881` satellite, ...).
    pub fn country(&self) -> Option<Country> {
        self.country
    }

    /// What kind of line it is, by the numbering plan.
    pub fn kind(&self) -> NumberType {
        self.kind
    }

    /// `03001234567`: as dialled inside the number's own country.
    pub fn national(&self) -> &str {
        &self.national
    }
}

/// A dial string with `{e164}`, `{digits}` and `{national}` placeholders,
/// checked when the configuration is read.
#[derive(Debug, Clone)]
pub struct NumberTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    E164,
    Digits,
    National,
}

impl NumberTemplate {
    /// Parses a template; unknown placeholders and stray braces are errors.
    pub fn parse(template: &str) -> Result<NumberTemplate, String> {
        if template.chars().any(|c| c.is_control()) {
            return Err("template must not contain control characters".into());
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err(format!("unmatched `}}` in template `{template}`"));
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let close = rest[open..].find('}').ok_or_else(|| format!("unmatched `{{` in template `{template}`"))?;
            let name = &rest[open + 1..open + close];
            parts.push(match name {
                "e164" => Part::E164,
                "digits" => Part::Digits,
                "national" => Part::National,
                other => {
                    return Err(format!(
                        "unknown placeholder `{{{other}}}` in template `{template}` (use {{e164}}, {{digits}} or {{national}})"
                    ));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if !parts.iter().any(|p| !matches!(p, Part::Text(_))) {
            return Err(format!("template `{template}` has no number placeholder"));
        }
        Ok(NumberTemplate { parts })
    }

    /// True if it dials the national form (`{national}`), which reaches the
    /// right phone only from inside the number's own country.
    pub fn uses_national(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::National))
    }

    /// The dial string for `number`.
    pub fn render(&self, number: &PhoneNumber) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::E164 => number.e164(),
                Part::Digits => number.digits(),
                Part::National => number.national(),
            })
            .collect()
    }
}

impl<'de> Deserialize<'de> for NumberTemplate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NumberTemplate::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pk() -> Country {
        Country::parse("PK").unwrap()
    }

    #[test]
    fn accepts_every_pakistani_form() {
        for input in ["03001234567", "3001234567", "923001234567", "+923001234567", "00923001234567"] {
            let n = PhoneNumber::parse(input, pk()).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(n.e164(), "+923001234567", "{input}");
            assert_eq!(n.digits(), "923001234567");
            assert_eq!(n.national(), "03001234567");
        }
    }

    #[test]
    fn sandbox_numbers_are_valid() {
        for n in
            ["03000000017", "03000000019", "03000000021", "03000000001", "03000000034", "03000000016", "03000000049"]
        {
            let p = PhoneNumber::parse(n, pk()).unwrap_or_else(|e| panic!("{n}: {e}"));
            assert_eq!(p.national(), n);
        }
    }

    #[test]
    fn other_countries_in_international_form() {
        let n = PhoneNumber::parse("+442079460958", pk()).unwrap();
        assert_eq!(n.e164(), "+442079460958");
        assert_eq!(n.national(), "02079460958");
        let n = PhoneNumber::parse("0014155552671", pk()).unwrap();
        assert_eq!(n.e164(), "+14155552671");
    }

    #[test]
    fn refuses_bad_characters() {
        for input in [
            "",
            "+",
            "00",
            "0300 1234567",
            "0300-1234567",
            "0300123456a",
            "0300\r\n1234567",
            "03001234567\n",
            "+92+3001234567",
            "(0300)1234567",
            "０３００１２３４５６７",
            "tel:+923001234567",
        ] {
            assert_eq!(PhoneNumber::parse(input, pk()), Err(NumberError::Characters), "{input:?}");
        }
    }

    #[test]
    fn refuses_too_many_digits() {
        assert_eq!(PhoneNumber::parse("+9230012345678901", pk()), Err(NumberError::TooLong));
        assert_eq!(PhoneNumber::parse("0300123456789012", pk()), Err(NumberError::TooLong));
    }

    #[test]
    fn refuses_invalid_numbers() {
        for input in ["0300123", "030012345678", "123", "+920001234567", "+999123456789", "0000000000"] {
            assert_eq!(PhoneNumber::parse(input, pk()), Err(NumberError::Invalid), "{input:?}");
        }
    }

    #[test]
    fn refuses_trunk_prefix_after_country_code() {
        assert_eq!(PhoneNumber::parse("+9203001234567", pk()), Err(NumberError::TrunkPrefix));
        assert_eq!(PhoneNumber::parse("009203001234567", pk()), Err(NumberError::TrunkPrefix));
    }

    #[test]
    fn template_renders_every_placeholder() {
        let n = PhoneNumber::parse("03001234567", pk()).unwrap();
        let t = NumberTemplate::parse("PJSIP/{national}@carrier").unwrap();
        assert_eq!(t.render(&n), "PJSIP/03001234567@carrier");
        let t = NumberTemplate::parse("SIP/{e164}/{digits}").unwrap();
        assert_eq!(t.render(&n), "SIP/+923001234567/923001234567");
    }

    #[test]
    fn template_errors() {
        assert!(NumberTemplate::parse("PJSIP/{number}@x").unwrap_err().contains("{number}"));
        assert!(NumberTemplate::parse("PJSIP/{national@x").is_err());
        assert!(NumberTemplate::parse("PJSIP/}x").is_err());
        assert!(NumberTemplate::parse("PJSIP/fixed@x").is_err());
    }

    #[test]
    fn number_types_come_from_the_numbering_plan() {
        let kind = |n: &str| PhoneNumber::parse(n, pk()).unwrap().kind();
        assert_eq!(kind("03001234567"), NumberType::Mobile);
        assert_eq!(kind("+442079460958"), NumberType::FixedLine);
        // Ofcom's ranges for drama (TV, film) use: real premium-rate, UAN
        // and personal numbers nobody answers. The UK has no shared-cost
        // type (08xx is premium rate there); Spain's 901 is.
        assert_eq!(kind("+449098790000"), NumberType::PremiumRate);
        assert_eq!(kind("+34901123456"), NumberType::SharedCost);
        assert_eq!(kind("+443069990000"), NumberType::Uan);
        assert_eq!(kind("+447031234567"), NumberType::PersonalNumber);
        assert_eq!(kind("+448081570000"), NumberType::TollFree);
        assert_eq!(NumberType::PremiumRate.name(), "premium_rate");
    }

    #[test]
    fn country_codes() {
        assert_eq!(Country::parse("pk").unwrap().calling_code(), Some(92));
        assert_eq!(Country::parse("CA").unwrap().calling_code(), Some(1));
        assert!(NumberTemplate::parse("PJSIP/{national}@x").unwrap().uses_national());
        assert!(!NumberTemplate::parse("PJSIP/{e164}@x").unwrap().uses_national());
        assert_eq!(Country::parse("pk").unwrap().code(), "PK");
        assert!(Country::parse("XX").unwrap_err().contains("XX"));
    }
}
