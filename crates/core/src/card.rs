//! Contact cards: an address plus a display name and hints on where to reach its owner, signed by the account.
//!
//! A card is shown as one link, `kith:<address>?card=<z-base-32>`, so anything that understands an address
//! can take the part before `?`, and the whole link fits a QR code. The card body does not repeat the key:
//! the address in front of it is the key the signature is checked against.
//!
//! Hints are how peers find each other until discovery through the DHT exists; they live behind the
//! `Discovery` seam of the networking layer, so they stay one source among several later.

use crate::address::{Address, AddressError, strip_scheme};
pub use crate::hints::Hints;
use crate::identity::{AccountKey, AccountSecret, Signature, domain_signed_bytes};
use crate::mailbox::MailInfo;
use crate::zbase32;
use serde::{Deserialize, Serialize};

/// Card format version carried in the body (3: with the owner's mail info).
pub const CARD_VERSION: u8 = 3;
/// The oldest card version still read (2: without mail info).
pub const OLDEST_CARD_VERSION: u8 = 2;
/// Mailboxes a card names at most (more would not leave room for their endpoint keys).
pub const MAX_CARD_MAILBOXES: usize = 2;
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
pub const MAX_DIRECT_ADDRS: usize = 8;
pub const MAX_RELAYS: usize = 4;
pub const MAX_RELAY_URL_LEN: usize = 256;
/// DHT nodes a card may name for bootstrapping.
pub const MAX_DHT_HINTS: usize = 8;
/// Longest encoded card body in bytes; keeps the link inside one QR code.
pub const MAX_CARD_BYTES: usize = 1200;

/// A verified contact card. Constructed only by [`ContactCard::issue`] or by parsing, which checks the
/// signature, so holding one means the account really said this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactCard {
    account: AccountKey,
    body: CardBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CardBody {
    version: u8,
    name: String,
    hints: Hints,
    /// Unix seconds; a newer card replaces an older one.
    issued: u64,
    /// Version 3: what a contact needs to leave mail while the owner is away (the device's Olm keys and
    /// where its mailboxes are), so that a contact who has only the card can write from the first day.
    mail: Option<MailInfo>,
    signature: Signature,
}

/// A version-2 body, as it was encoded and signed (no mail info).
#[derive(Serialize, Deserialize)]
struct CardBodyV2 {
    version: u8,
    name: String,
    hints: Hints,
    issued: u64,
    signature: Signature,
}

/// What can be wrong with a card link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    #[error("{0}")]
    Address(#[from] AddressError),
    #[error("the link has no card part (`?card=`): it is an address, not a card")]
    NotACard,
    #[error("unknown part {0:?} in the card link: copy the link exactly as it was given")]
    UnknownParameter(String),
    #[error(
        "character {ch:?} at position {pos} of the card part cannot appear in a card: the link was altered"
    )]
    InvalidChar { ch: char, pos: usize },
    #[error("the card is truncated or damaged: copy the whole link")]
    Malformed,
    #[error("the card is {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("this card was made by a newer version of kith (card version {0}): update kith")]
    UnsupportedVersion(u8),
    #[error(
        "the card's signature does not match its address: it was altered or forged, ask for it again"
    )]
    BadSignature,
    #[error("invalid display name: {0}")]
    InvalidName(&'static str),
    #[error("the card has too many hints")]
    TooManyHints,
    #[error(
        "the card's mail keys are not signed by the device they name: it was altered, ask for it again"
    )]
    BadMailInfo,
}

/// Either a bare address or a full card, as a user may paste either to `kith add`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedContact {
    Address(Address),
    Card(Box<ContactCard>),
}

impl ParsedContact {
    /// Parses what a user pasted: an address or a card link.
    pub fn parse(text: &str) -> Result<Self, CardError> {
        // Mail and chat clients wrap a long card link, and a copy may keep the breaks: no whitespace is
        // part of an address or a card, so all of it goes.
        let joined: String;
        let text = if text.chars().any(char::is_whitespace) {
            joined = text.chars().filter(|c| !c.is_whitespace()).collect();
            joined.as_str()
        } else {
            text
        };
        let body = strip_scheme(text)?;
        if body.contains('?') {
            Ok(Self::Card(Box::new(text.parse()?)))
        } else {
            Ok(Self::Address(text.parse()?))
        }
    }

    pub fn address(&self) -> Address {
        match self {
            Self::Address(a) => *a,
            Self::Card(c) => c.address(),
        }
    }
}

/// Checks a display name: 1 to 64 characters, no control characters, not only spaces.
pub fn check_name(name: &str) -> Result<(), CardError> {
    if name.trim().is_empty() {
        return Err(CardError::InvalidName("it is empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(CardError::InvalidName("it is longer than 64 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(CardError::InvalidName("it contains control characters"));
    }
    Ok(())
}

fn check_hints(h: &Hints) -> Result<(), CardError> {
    if h.direct.len() > MAX_DIRECT_ADDRS
        || h.dht.len() > MAX_DHT_HINTS
        || h.relays.len() > MAX_RELAYS
        || h.relays.iter().any(|r| r.len() > MAX_RELAY_URL_LEN)
    {
        return Err(CardError::TooManyHints);
    }
    Ok(())
}

fn check_mail(mail: &MailInfo) -> Result<(), CardError> {
    if mail.mailboxes.len() > MAX_CARD_MAILBOXES
        || mail
            .mailboxes
            .iter()
            .any(|m| m.keys.len() > crate::mailbox::ENDPOINT_PERIODS)
    {
        return Err(CardError::TooManyHints);
    }
    for m in &mail.mailboxes {
        check_hints(&m.hints)?;
    }
    mail.bundle.verify().map_err(|_| CardError::BadMailInfo)
}

impl ContactCard {
    const DOMAIN: &'static str = "kith contact-card v1";

    fn signed_part(
        account: &AccountKey,
        version: u8,
        name: &str,
        hints: &Hints,
        issued: u64,
        mail: Option<&MailInfo>,
    ) -> Vec<u8> {
        if version == 2 {
            domain_signed_bytes(Self::DOMAIN, &(account, version, name, hints, issued))
        } else {
            domain_signed_bytes(Self::DOMAIN, &(account, version, name, hints, issued, mail))
        }
    }

    /// Makes and signs a card.
    pub fn issue(
        account: &AccountSecret,
        name: &str,
        hints: Hints,
        issued: u64,
    ) -> Result<Self, CardError> {
        Self::sign(account, name, hints, None, issued)
    }

    /// Makes and signs a card that also carries `mail` (the owner's Olm keys and mailboxes), with as much
    /// of it as fits: at most [`MAX_CARD_MAILBOXES`] mailboxes, then fewer of their endpoint keys for
    /// later periods, then fewer mailboxes, and without mail info if even that does not fit.
    pub fn issue_with_mail(
        account: &AccountSecret,
        name: &str,
        hints: Hints,
        mail: MailInfo,
        issued: u64,
    ) -> Result<Self, CardError> {
        let mut mail = mail;
        mail.mailboxes.truncate(MAX_CARD_MAILBOXES);
        loop {
            match Self::sign(account, name, hints.clone(), Some(mail.clone()), issued) {
                Err(CardError::TooLarge { .. }) => {}
                other => return other,
            }
            // The mailbox with the most keys gives up its last one; once none has any, the last mailbox
            // goes; once none is left, the card goes without mail info.
            if let Some(m) = mail
                .mailboxes
                .iter_mut()
                .filter(|m| !m.keys.is_empty())
                .max_by_key(|m| m.keys.len())
            {
                m.keys.pop();
            } else if mail.mailboxes.pop().is_none() {
                return Self::sign(account, name, hints, None, issued);
            }
        }
    }

    fn sign(
        account: &AccountSecret,
        name: &str,
        hints: Hints,
        mail: Option<MailInfo>,
        issued: u64,
    ) -> Result<Self, CardError> {
        check_name(name)?;
        check_hints(&hints)?;
        if let Some(m) = &mail {
            check_mail(m)?;
        }
        let key = account.public();
        let signature = account.sign(&Self::signed_part(
            &key,
            CARD_VERSION,
            name,
            &hints,
            issued,
            mail.as_ref(),
        ));
        let card = Self {
            account: key,
            body: CardBody {
                version: CARD_VERSION,
                name: name.to_owned(),
                hints,
                issued,
                mail,
                signature,
            },
        };
        let len = card.encode_body().len();
        if len > MAX_CARD_BYTES {
            return Err(CardError::TooLarge {
                len,
                max: MAX_CARD_BYTES,
            });
        }
        Ok(card)
    }

    pub fn account(&self) -> AccountKey {
        self.account
    }
    pub fn address(&self) -> Address {
        Address::new(self.account)
    }
    pub fn name(&self) -> &str {
        &self.body.name
    }
    pub fn hints(&self) -> &Hints {
        &self.body.hints
    }
    pub fn issued(&self) -> u64 {
        self.body.issued
    }
    /// The owner's Olm keys and mailboxes as the card gave them (signed by the account with the card;
    /// the keys also by the device they name). None in cards before version 3.
    pub fn mail(&self) -> Option<&MailInfo> {
        self.body.mail.as_ref()
    }

    fn encode_body(&self) -> Vec<u8> {
        // Each version in the layout it was signed in.
        if self.body.version == 2 {
            let b = &self.body;
            postcard::to_allocvec(&CardBodyV2 {
                version: b.version,
                name: b.name.clone(),
                hints: b.hints.clone(),
                issued: b.issued,
                signature: b.signature,
            })
            .unwrap_or_default()
        } else {
            postcard::to_allocvec(&self.body).unwrap_or_default()
        }
    }

    /// The card as bytes (for storage and the wire): key followed by the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.account.as_bytes().to_vec();
        out.extend(self.encode_body());
        out
    }

    /// Parses and verifies bytes made by [`Self::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CardError> {
        if bytes.len() < 32 {
            return Err(CardError::Malformed);
        }
        let key: [u8; 32] = bytes[..32].try_into().map_err(|_| CardError::Malformed)?;
        let account = AccountKey::from_bytes(key)
            .map_err(|_| CardError::Address(AddressError::InvalidKey))?;
        Self::from_body(account, &bytes[32..])
    }

    fn from_body(account: AccountKey, bytes: &[u8]) -> Result<Self, CardError> {
        if bytes.len() > MAX_CARD_BYTES {
            return Err(CardError::TooLarge {
                len: bytes.len(),
                max: MAX_CARD_BYTES,
            });
        }
        // The version is the first byte of the postcard body (a u8 is encoded as itself).
        let body: CardBody = match bytes.first() {
            None => return Err(CardError::Malformed),
            Some(&v) if v > CARD_VERSION => return Err(CardError::UnsupportedVersion(v)),
            Some(&v) if v < OLDEST_CARD_VERSION => return Err(CardError::Malformed),
            Some(2) => match postcard::take_from_bytes::<CardBodyV2>(bytes) {
                Ok((b, [])) => CardBody {
                    version: b.version,
                    name: b.name,
                    hints: b.hints,
                    issued: b.issued,
                    mail: None,
                    signature: b.signature,
                },
                _ => return Err(CardError::Malformed),
            },
            Some(_) => match postcard::take_from_bytes(bytes) {
                Ok((body, [])) => body,
                _ => return Err(CardError::Malformed),
            },
        };
        check_name(&body.name)?;
        check_hints(&body.hints)?;
        let signed = Self::signed_part(
            &account,
            body.version,
            &body.name,
            &body.hints,
            body.issued,
            body.mail.as_ref(),
        );
        account
            .verify(&signed, &body.signature)
            .map_err(|_| CardError::BadSignature)?;
        Ok(Self { account, body })
    }

    /// The card as one link: `kith:<address>?card=<z-base-32>`.
    pub fn to_link(&self) -> String {
        format!(
            "{}?card={}",
            self.address(),
            zbase32::encode(&self.encode_body())
        )
    }
}

impl std::str::FromStr for ContactCard {
    type Err = CardError;
    fn from_str(text: &str) -> Result<Self, CardError> {
        let rest = strip_scheme(text)?;
        let Some((addr, query)) = rest.split_once('?') else {
            // Validate the address first so a typo there is reported as such.
            Address::parse_body(rest)?;
            return Err(CardError::NotACard);
        };
        let address = Address::parse_body(addr)?;
        let encoded = match query.split_once('=') {
            Some((k, v)) if k.eq_ignore_ascii_case("card") => v,
            Some((k, _)) => return Err(CardError::UnknownParameter(k.chars().take(16).collect())),
            None => {
                return Err(CardError::UnknownParameter(
                    query.chars().take(16).collect(),
                ));
            }
        };
        let max_chars = (MAX_CARD_BYTES * 8).div_ceil(5);
        if encoded.len() > max_chars {
            return Err(CardError::TooLarge {
                len: encoded.len() * 5 / 8,
                max: MAX_CARD_BYTES,
            });
        }
        let bytes = zbase32::decode(encoded).map_err(|e| match e {
            zbase32::DecodeError::InvalidChar { ch, pos } => CardError::InvalidChar { ch, pos },
            zbase32::DecodeError::TrailingBits => CardError::Malformed,
        })?;
        Self::from_body(address.account(), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{DeviceSecret, EndpointKey};
    use crate::mailbox::MailboxAddr;
    use crate::seal::RatchetAccount;
    use proptest::prelude::*;
    use rand::{SeedableRng, rngs::StdRng};
    use std::net::SocketAddr;

    fn secret(seed: u64) -> AccountSecret {
        AccountSecret::generate(&mut StdRng::seed_from_u64(seed))
    }

    fn hints() -> Hints {
        Hints {
            endpoint: Some(EndpointKey::from_bytes(*secret(99).public().as_bytes()).unwrap()),
            direct: vec!["127.0.0.1:4242".parse().unwrap()],
            relays: vec!["https://relay.example/".into()],
            dht: vec!["192.0.2.7:6881".parse().unwrap()],
            contact_key: Some([5u8; 32]),
        }
    }

    #[test]
    fn link_round_trip_any_case() {
        let card = ContactCard::issue(&secret(1), "Alice Ö", hints(), 1_700_000_000).unwrap();
        let link = card.to_link();
        assert_eq!(link.parse::<ContactCard>().unwrap(), card);
        assert_eq!(link.to_uppercase().parse::<ContactCard>().unwrap(), card);
        assert_eq!(ContactCard::from_bytes(&card.to_bytes()).unwrap(), card);
        assert_eq!(
            ParsedContact::parse(&link).unwrap(),
            ParsedContact::Card(Box::new(card.clone()))
        );
        assert_eq!(
            ParsedContact::parse(&card.address().to_string()).unwrap(),
            ParsedContact::Address(card.address())
        );
    }

    #[test]
    fn a_line_wrapped_card_is_read() {
        let card = ContactCard::issue(&secret(1), "Alice", hints(), 1_700_000_000).unwrap();
        let link = card.to_link();
        // As a mail client wraps it at 72 columns (with a trailing space at each break), and as a chat
        // client breaks it with CRLF and indents.
        let chars: Vec<char> = link.chars().collect();
        let mail: String = chars
            .chunks(72)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join(" \n");
        let chat: String = chars
            .chunks(40)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join("\r\n\t");
        for wrapped in [mail, chat, format!("  {link}\n")] {
            assert_eq!(
                ParsedContact::parse(&wrapped).unwrap(),
                ParsedContact::Card(Box::new(card.clone())),
                "{wrapped:?}"
            );
        }
        let address = card.address().to_string();
        let (a, b) = address.split_at(20);
        assert_eq!(
            ParsedContact::parse(&format!("{a}\n{b}")).unwrap(),
            ParsedContact::Address(card.address())
        );
    }

    #[test]
    fn forged_and_damaged_cards_are_refused() {
        let alice = ContactCard::issue(&secret(1), "Alice", hints(), 5).unwrap();
        let mallory = ContactCard::issue(&secret(2), "Alice", hints(), 5).unwrap();
        // Mallory's body under Alice's address: signature fails.
        let (_, m_body) = mallory
            .to_link()
            .split_once('?')
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .unwrap();
        let forged = format!("{}?{}", alice.address(), m_body);
        assert_eq!(forged.parse::<ContactCard>(), Err(CardError::BadSignature));
        let link = alice.to_link();
        assert_eq!(
            link[..link.len() - 10].parse::<ContactCard>(),
            Err(CardError::Malformed)
        );
        assert!(matches!(
            format!("{link}!").parse::<ContactCard>(),
            Err(CardError::InvalidChar { ch: '!', .. })
        ));
        assert_eq!(
            alice.address().to_string().parse::<ContactCard>(),
            Err(CardError::NotACard)
        );
        assert!(matches!(
            link.replace("?card=", "?cart=").parse::<ContactCard>(),
            Err(CardError::UnknownParameter(_))
        ));
        assert!(matches!(
            ContactCard::issue(&secret(1), "", hints(), 5),
            Err(CardError::InvalidName(_))
        ));
        assert!(matches!(
            ContactCard::issue(&secret(1), "a\nb", hints(), 5),
            Err(CardError::InvalidName(_))
        ));
    }

    #[test]
    fn every_changed_character_in_the_card_is_caught() {
        let link = ContactCard::issue(&secret(3), "Bob", hints(), 9)
            .unwrap()
            .to_link();
        let start = link.find('=').unwrap() + 1;
        for pos in start..link.len() {
            let mut chars: Vec<char> = link.chars().collect();
            chars[pos] = if chars[pos] == 'y' { 'n' } else { 'y' };
            let s: String = chars.into_iter().collect();
            assert!(
                s.parse::<ContactCard>().is_err(),
                "change at {pos} accepted"
            );
        }
    }

    proptest! {
        #[test]
        fn round_trip(seed in any::<u64>(), name in "[a-zA-Z0-9 äöü]{1,64}", issued in any::<u64>(),
                      port in any::<u16>(), n_relays in 0usize..4) {
            prop_assume!(!name.trim().is_empty());
            let h = Hints {
                endpoint: None,
                direct: vec![SocketAddr::from(([127, 0, 0, 1], port))],
                relays: (0..n_relays).map(|i| format!("https://r{i}.example/")).collect(),
                dht: vec![SocketAddr::from(([192, 0, 2, 1], port))],
                contact_key: (port % 2 == 0).then_some([port as u8; 32]),
            };
            let card = ContactCard::issue(&secret(seed), &name, h, issued).unwrap();
            prop_assert_eq!(card.to_link().parse::<ContactCard>().unwrap(), card.clone());
            prop_assert_eq!(ContactCard::from_bytes(&card.to_bytes()).unwrap(), card);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500), s in "\\PC{0,300}") {
            let _ = ContactCard::from_bytes(&bytes);
            let _ = ParsedContact::parse(&s);
            let _ = format!("kith:{}?card={s}", "y".repeat(56)).parse::<ContactCard>();
            let addr = ContactCard::issue(&secret(1), "a", Hints::default(), 0).unwrap().address();
            let _ = format!("{addr}?card={}", zbase32::encode(&bytes)).parse::<ContactCard>();
            let lossy = String::from_utf8_lossy(&bytes);
            let _ = ParsedContact::parse(&lossy);
        }
    }

    fn mail(mailboxes: usize, keys: usize) -> MailInfo {
        let mut rng = StdRng::seed_from_u64(3);
        let device = DeviceSecret::generate(&mut rng);
        let bundle = RatchetAccount::new().bundle(&device, 0);
        let key = |b: u64| EndpointKey::from_bytes(*secret(b).public().as_bytes()).unwrap();
        MailInfo {
            bundle,
            mailboxes: (0..mailboxes as u64)
                .map(|i| MailboxAddr {
                    hints: Hints {
                        endpoint: Some(key(100 + i)),
                        direct: vec!["192.0.2.9:4433".parse().unwrap()],
                        relays: vec![format!("https://relay-{i}.example/#sha256=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")],
                        dht: vec![],
                        contact_key: None,
                    },
                    first_period: 20_000,
                    keys: (0..keys as u64).map(|k| key(200 + 40 * i + k)).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_card_carries_its_owners_mail_info_signed() {
        let m = mail(1, 3);
        let card = ContactCard::issue_with_mail(&secret(1), "Bob", hints(), m.clone(), 7).unwrap();
        let back: ContactCard = card.to_link().parse().unwrap();
        assert_eq!(back.mail(), Some(&m));
        assert_eq!(ContactCard::from_bytes(&card.to_bytes()).unwrap(), card);
        // The mail info is covered by the account's signature: another mailbox key is refused.
        let mut forged = card.clone();
        forged.body.mail.as_mut().unwrap().mailboxes[0].keys[0] = hints().endpoint.unwrap();
        assert_eq!(
            ContactCard::from_bytes(&forged.to_bytes()),
            Err(CardError::BadSignature)
        );
        // And the Olm keys by the device they name: a bundle whose signature does not hold is refused
        // even when the account signed it.
        let mut bad = m.clone();
        bad.bundle.fallback[0] ^= 1;
        assert_eq!(
            ContactCard::issue_with_mail(&secret(1), "Bob", hints(), bad, 7),
            Err(CardError::BadMailInfo)
        );
    }

    #[test]
    fn a_card_keeps_as_much_mail_info_as_fits() {
        // Four mailboxes with 32 periods of keys each: far more than a card holds.
        let card =
            ContactCard::issue_with_mail(&secret(1), "Bob", hints(), mail(4, 32), 7).unwrap();
        assert!(card.encode_body().len() <= MAX_CARD_BYTES);
        let kept = card.mail().expect("mail info kept");
        assert_eq!(kept.mailboxes.len(), MAX_CARD_MAILBOXES);
        // Keys given up evenly, the first ones (the current periods) kept.
        let counts: Vec<usize> = kept.mailboxes.iter().map(|m| m.keys.len()).collect();
        assert!(counts.iter().all(|&c| c >= 3), "{counts:?}");
        assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
        assert_eq!(
            kept.mailboxes[0].keys[..],
            mail(1, 32).mailboxes[0].keys[..counts[0]]
        );
        // Hints so long that no mailbox fits: the card goes without mail info rather than failing.
        let mut long = hints();
        long.relays = (0..4)
            .map(|i| format!("https://{}{i}/", "r".repeat(240)))
            .collect();
        let card = ContactCard::issue_with_mail(&secret(1), "Bob", long, mail(2, 4), 7).unwrap();
        assert_eq!(card.mail(), None);
    }

    #[test]
    fn a_version_2_card_is_still_read() {
        // Made as kith made cards before version 3: another layout, signed without mail info.
        let account = secret(1);
        let key = account.public();
        let h = hints();
        let signed = domain_signed_bytes(ContactCard::DOMAIN, &(&key, 2u8, "Old", &h, 5u64));
        let body = CardBodyV2 {
            version: 2,
            name: "Old".into(),
            hints: h.clone(),
            issued: 5,
            signature: account.sign(&signed),
        };
        let mut bytes = key.as_bytes().to_vec();
        bytes.extend(postcard::to_allocvec(&body).unwrap());
        let card = ContactCard::from_bytes(&bytes).unwrap();
        assert_eq!((card.name(), card.hints(), card.mail()), ("Old", &h, None));
        // Written back in its own layout, so its signature still holds (stored cards, cards passed on).
        assert_eq!(card.to_bytes(), bytes);
        assert_eq!(card.to_link().parse::<ContactCard>().unwrap(), card);
        // A card of a version after this one names the update needed.
        let mut newer = bytes.clone();
        newer[32] = CARD_VERSION + 1;
        assert_eq!(
            ContactCard::from_bytes(&newer),
            Err(CardError::UnsupportedVersion(CARD_VERSION + 1))
        );
    }
}
