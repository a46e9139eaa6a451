//! DNS message codec: query encoding and response decoding.
//!
//! Why: the resolver must read untrusted UDP/TCP payloads without ever
//! panicking, looping or allocating without bound, so parsing is done here
//! once, at the edge, into owned types the resolver can trust.
//!
//! Rules: RFC 1035 §4.1 (header, question, resource records), §4.1.4
//! (compression), §3.1 (name limits), RFC 3596 (AAAA), RFC 2181 §8 (a TTL with
//! the top bit set means zero), RFC 2308 §5 (negative TTL from the SOA).
//!
//! Invariants:
//! - Every decoded name is canonical: lowercase, no trailing dot, the root is
//!   `""`, and octets that are not printable ASCII (and `.` or `\` inside a
//!   label) are written `\DDD` / `\.` / `\\` (RFC 1035 §5.1). Two names are
//!   equal as DNS names exactly when their canonical strings are equal, and
//!   [`encode_query`] reads the same syntax back.
//! - A compression pointer must point strictly before the start of the
//!   name segment that contains it (so pointers only go backwards and can
//!   never loop), never into the header, and a name follows at most
//!   [`MAX_POINTER_HOPS`] pointers. Names are at most [`MAX_NAME_WIRE_LEN`]
//!   octets uncompressed; labels at most [`MAX_LABEL_LEN`].
//! - Every read is bounds-checked; no input can make the decoder panic.
//!
//! Kept record types: A, AAAA, MX, CNAME (and SOA in the authority section,
//! for its negative-caching minimum), class IN only, and the EDNS(0) OPT
//! pseudo-record (RFC 6891 §6.1) as [`Message::edns`]. Other records are
//! skipped after their bounds are checked.
//!
//! EDNS(0): queries carry an OPT record advertising [`EDNS_UDP_PAYLOAD`]
//! octets (the DNS flag day 2020 value, which avoids IP fragmentation), so
//! answers over 512 octets do not cost a TCP round trip; the resolver falls
//! back to a plain query for servers that refuse it. No EDNS options, no DO bit.
//!
//! Not supported: DNSSEC, name compression on encode, more than one question
//! per message, IDNA (names must already be A-labels).

use std::fmt;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Fixed DNS header size (RFC 1035 §4.1.1).
pub const HEADER_LEN: usize = 12;
/// Longest name on the wire, length octets and the root label included.
pub const MAX_NAME_WIRE_LEN: usize = 255;
/// Longest name in text form without the trailing dot (255 - 2).
pub const MAX_NAME_TEXT_LEN: usize = 253;
/// Longest label.
pub const MAX_LABEL_LEN: usize = 63;
/// Most compression pointers followed while reading one name.
pub const MAX_POINTER_HOPS: usize = 16;
/// Largest UDP response a server may send us without EDNS(0).
pub const MAX_UDP_PAYLOAD: usize = 512;
/// UDP payload size advertised in our OPT record (RFC 6891 §6.2.5).
pub const EDNS_UDP_PAYLOAD: u16 = 1232;

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_MX: u16 = 15;
pub const TYPE_AAAA: u16 = 28;
/// EDNS(0) pseudo-record (RFC 6891 §6.1.1).
pub const TYPE_OPT: u16 = 41;
pub const CLASS_IN: u16 = 1;

pub const OPCODE_QUERY: u8 = 0;
pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;
/// Extended RCODE 16 (RFC 6891 §6.1.3): only visible with the OPT record's
/// upper bits, see [`Message::rcode`].
pub const RCODE_BADVERS: u16 = 16;

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
/// TTLs above this are read as 0 (RFC 2181 §8).
const MAX_TTL: u32 = 0x7fff_ffff;

/// Header fields (RFC 1035 §4.1.1); the section counts live in [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub id: u16,
    pub is_response: bool,
    pub opcode: u8,
    pub authoritative: bool,
    pub truncated: bool,
    pub recursion_desired: bool,
    pub recursion_available: bool,
    pub rcode: u8,
}

impl Header {
    fn flags(&self) -> u16 {
        let mut flags = (u16::from(self.opcode & 0x0f) << 11) | u16::from(self.rcode & 0x0f);
        for (set, bit) in [
            (self.is_response, FLAG_QR),
            (self.authoritative, FLAG_AA),
            (self.truncated, FLAG_TC),
            (self.recursion_desired, FLAG_RD),
            (self.recursion_available, FLAG_RA),
        ] {
            if set {
                flags |= bit;
            }
        }
        flags
    }

    fn from_flags(id: u16, flags: u16) -> Header {
        Header {
            id,
            is_response: flags & FLAG_QR != 0,
            opcode: ((flags >> 11) & 0x0f) as u8,
            authoritative: flags & FLAG_AA != 0,
            truncated: flags & FLAG_TC != 0,
            recursion_desired: flags & FLAG_RD != 0,
            recursion_available: flags & FLAG_RA != 0,
            rcode: (flags & 0x0f) as u8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Canonical name (see the module invariants).
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

/// The record data tern understands. SOA keeps only its MINIMUM field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Mx { preference: u16, exchange: String },
    Cname(String),
    Soa { minimum: u32 },
}

impl RData {
    pub fn rtype(&self) -> u16 {
        match self {
            RData::A(_) => TYPE_A,
            RData::Aaaa(_) => TYPE_AAAA,
            RData::Mx { .. } => TYPE_MX,
            RData::Cname(_) => TYPE_CNAME,
            RData::Soa { .. } => TYPE_SOA,
        }
    }
}

/// A class-IN resource record of a kept type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub ttl: u32,
    pub data: RData,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub header: Header,
    pub question: Option<Question>,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    /// Kept records of the additional section (the OPT record is in `edns`).
    pub additional: Vec<Record>,
    /// The OPT pseudo-record; encoded last in the additional section.
    pub edns: Option<Edns>,
}

/// The fields of an OPT pseudo-record (RFC 6891 §6.1.2, §6.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The sender's UDP payload size (the record's CLASS field).
    pub udp_payload: u16,
    /// The upper 8 bits of the 12-bit RCODE.
    pub extended_rcode: u8,
    pub version: u8,
}

impl Edns {
    /// What tern puts in its queries.
    pub fn ours() -> Edns {
        Edns {
            udp_payload: EDNS_UDP_PAYLOAD,
            extended_rcode: 0,
            version: 0,
        }
    }
}

impl Message {
    /// The full RCODE: the header's 4 bits plus the OPT record's upper 8.
    pub fn rcode(&self) -> u16 {
        let upper = self.edns.map_or(0, |e| u16::from(e.extended_rcode));
        (upper << 4) | u16::from(self.header.rcode & 0x0f)
    }
}

/// Why a packet could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The packet ends inside a field.
    Truncated,
    /// A compression pointer points forward, at itself, or into the header.
    BadPointer,
    TooManyPointers,
    NameTooLong,
    /// Label type 0x40 or 0x80 (RFC 6891 §5 / reserved).
    BadLabelType,
    /// RDATA length does not match its type.
    BadRdata,
    /// More than one question.
    QuestionCount,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            WireError::Truncated => "packet truncated",
            WireError::BadPointer => "bad compression pointer",
            WireError::TooManyPointers => "too many compression pointers",
            WireError::NameTooLong => "name too long",
            WireError::BadLabelType => "unknown label type",
            WireError::BadRdata => "bad record data length",
            WireError::QuestionCount => "more than one question",
        };
        f.write_str(text)
    }
}

/// Why a name in text form is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Empty,
    EmptyLabel,
    LabelTooLong,
    NameTooLong,
    /// Space, control or non-ASCII octet (IDNA is not supported), or a bad `\` escape.
    BadCharacter,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            NameError::Empty => "empty name",
            NameError::EmptyLabel => "empty label",
            NameError::LabelTooLong => "label longer than 63 octets",
            NameError::NameTooLong => "name longer than 253 characters",
            NameError::BadCharacter => "invalid character in name",
        };
        f.write_str(text)
    }
}

// ---------------------------------------------------------------------------
// Names in text form

/// Parses a name in text form (optional trailing dot, `\DDD` and `\X`
/// escapes) into its labels, enforcing the RFC 1035 §3.1 limits.
fn text_labels(text: &str) -> Result<Vec<Vec<u8>>, NameError> {
    if text.is_empty() || text == "." {
        return Err(NameError::Empty);
    }
    let bytes = text.as_bytes();
    let mut labels = Vec::new();
    let mut label = Vec::new();
    let mut ended_with_dot = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        ended_with_dot = false;
        match b {
            b'.' => {
                if label.is_empty() {
                    return Err(NameError::EmptyLabel);
                }
                labels.push(std::mem::take(&mut label));
                ended_with_dot = true;
                i += 1;
            }
            b'\\' => {
                let digits = bytes
                    .get(i + 1..i + 4)
                    .filter(|d| d.iter().all(u8::is_ascii_digit));
                if let Some(d) = digits {
                    let value = d.iter().fold(0u32, |v, c| v * 10 + u32::from(c - b'0'));
                    label.push(u8::try_from(value).map_err(|_| NameError::BadCharacter)?);
                    i += 4;
                } else {
                    match bytes.get(i + 1) {
                        Some(&c) if (0x21..=0x7e).contains(&c) => label.push(c),
                        _ => return Err(NameError::BadCharacter),
                    }
                    i += 2;
                }
            }
            0x21..=0x7e => {
                label.push(b);
                i += 1;
            }
            _ => return Err(NameError::BadCharacter),
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::LabelTooLong);
        }
    }
    if !ended_with_dot {
        labels.push(label);
    }
    let wire_len: usize = labels.iter().map(|l| l.len() + 1).sum::<usize>() + 1;
    if wire_len > MAX_NAME_WIRE_LEN {
        return Err(NameError::NameTooLong);
    }
    Ok(labels)
}

/// Appends one label in canonical text form.
fn push_label(out: &mut String, label: &[u8]) {
    for &b in label {
        let b = b.to_ascii_lowercase();
        match b {
            b'.' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x21..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
}

fn render(labels: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for (i, label) in labels.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_label(&mut out, label);
    }
    out
}

/// Validates a name and returns its canonical form (lowercase, no trailing
/// dot). Rejects the root, empty labels, labels over 63 octets and names over
/// 253 characters.
pub fn normalize_name(text: &str) -> Result<String, NameError> {
    text_labels(text).map(|labels| render(&labels))
}

/// Writes a name uncompressed. The root (`""`) is one zero octet.
fn put_name(out: &mut Vec<u8>, name: &str) -> Result<(), NameError> {
    if !name.is_empty() {
        for label in text_labels(name)? {
            // text_labels caps labels at 63 octets, so this cannot truncate.
            out.push(label.len() as u8);
            out.extend_from_slice(&label);
        }
    }
    out.push(0);
    Ok(())
}

// ---------------------------------------------------------------------------
// Encoding

/// A recursive (RD) query for `name`/`qtype`, class IN, ready for UDP;
/// with an EDNS(0) OPT record when `edns`.
pub fn encode_query(id: u16, name: &str, qtype: u16, edns: bool) -> Result<Vec<u8>, NameError> {
    Message {
        header: Header {
            id,
            recursion_desired: true,
            ..Header::default()
        },
        question: Some(Question {
            name: name.to_string(),
            qtype,
            qclass: CLASS_IN,
        }),
        edns: edns.then(Edns::ours),
        ..Message::default()
    }
    .encode()
}

impl Message {
    /// Encodes without compression. Used for queries and by tests (and fake
    /// servers) to build responses. Sections longer than 65535 records are cut.
    pub fn encode(&self) -> Result<Vec<u8>, NameError> {
        let mut out = Vec::with_capacity(MAX_UDP_PAYLOAD);
        let count = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
        out.extend_from_slice(&self.header.id.to_be_bytes());
        out.extend_from_slice(&self.header.flags().to_be_bytes());
        for n in [
            usize::from(self.question.is_some()),
            self.answers.len(),
            self.authority.len(),
            self.additional.len() + usize::from(self.edns.is_some()),
        ] {
            out.extend_from_slice(&count(n).to_be_bytes());
        }
        if let Some(q) = &self.question {
            put_name(&mut out, &q.name)?;
            out.extend_from_slice(&q.qtype.to_be_bytes());
            out.extend_from_slice(&q.qclass.to_be_bytes());
        }
        for section in [&self.answers, &self.authority, &self.additional] {
            for record in section.iter().take(usize::from(u16::MAX)) {
                put_record(&mut out, record)?;
            }
        }
        if let Some(edns) = self.edns {
            // Root owner, TYPE OPT, CLASS = payload size, TTL = extended
            // RCODE, version, flags (0), no options.
            out.push(0);
            out.extend_from_slice(&TYPE_OPT.to_be_bytes());
            out.extend_from_slice(&edns.udp_payload.to_be_bytes());
            out.extend_from_slice(&[edns.extended_rcode, edns.version, 0, 0]);
            out.extend_from_slice(&0u16.to_be_bytes());
        }
        Ok(out)
    }
}

fn put_record(out: &mut Vec<u8>, record: &Record) -> Result<(), NameError> {
    put_name(out, &record.name)?;
    out.extend_from_slice(&record.data.rtype().to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&record.ttl.to_be_bytes());
    let mut rdata = Vec::new();
    match &record.data {
        RData::A(addr) => rdata.extend_from_slice(&addr.octets()),
        RData::Aaaa(addr) => rdata.extend_from_slice(&addr.octets()),
        RData::Mx {
            preference,
            exchange,
        } => {
            rdata.extend_from_slice(&preference.to_be_bytes());
            put_name(&mut rdata, exchange)?;
        }
        RData::Cname(target) => put_name(&mut rdata, target)?,
        RData::Soa { minimum } => {
            // MNAME and RNAME as the root, SERIAL..EXPIRE zero.
            rdata.extend_from_slice(&[0, 0]);
            rdata.extend_from_slice(&[0; 16]);
            rdata.extend_from_slice(&minimum.to_be_bytes());
        }
    }
    // Names are at most 255 octets, so RDATA always fits in u16.
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(&rdata);
    Ok(())
}

// ---------------------------------------------------------------------------
// Decoding

/// Decodes the header and the question only: enough to decide whether a
/// response belongs to a query before trusting the rest of it.
pub fn decode_head(packet: &[u8]) -> Result<(Header, Option<Question>), WireError> {
    let mut reader = Reader {
        packet,
        pos: 0,
        edns: None,
    };
    let (header, counts) = reader.header()?;
    let question = reader.question(counts[0])?;
    Ok((header, question))
}

/// Decodes a whole message. Records of other types or classes are skipped.
pub fn decode(packet: &[u8]) -> Result<Message, WireError> {
    let mut reader = Reader {
        packet,
        pos: 0,
        edns: None,
    };
    let (header, counts) = reader.header()?;
    let question = reader.question(counts[0])?;
    let answers = reader.records(counts[1])?;
    let authority = reader.records(counts[2])?;
    let additional = reader.records(counts[3])?;
    Ok(Message {
        header,
        question,
        answers,
        authority,
        additional,
        edns: reader.edns,
    })
}

struct Reader<'a> {
    packet: &'a [u8],
    pos: usize,
    /// The first OPT record seen (RFC 6891 §6.1.1 allows one).
    edns: Option<Edns>,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let slice = self.packet.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes(
            b.try_into().map_err(|_| WireError::Truncated)?,
        ))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes(
            b.try_into().map_err(|_| WireError::Truncated)?,
        ))
    }

    /// The header and the four section counts.
    fn header(&mut self) -> Result<(Header, [u16; 4]), WireError> {
        let id = self.u16()?;
        let flags = self.u16()?;
        let counts = [self.u16()?, self.u16()?, self.u16()?, self.u16()?];
        Ok((Header::from_flags(id, flags), counts))
    }

    fn question(&mut self, count: u16) -> Result<Option<Question>, WireError> {
        match count {
            0 => Ok(None),
            1 => {
                let name = self.name()?;
                let qtype = self.u16()?;
                let qclass = self.u16()?;
                Ok(Some(Question {
                    name,
                    qtype,
                    qclass,
                }))
            }
            _ => Err(WireError::QuestionCount),
        }
    }

    /// Reads a name at the cursor and moves past its in-place part.
    fn name(&mut self) -> Result<String, WireError> {
        let (name, end) = read_name(self.packet, self.pos)?;
        self.pos = end;
        Ok(name)
    }

    fn records(&mut self, count: u16) -> Result<Vec<Record>, WireError> {
        let mut records = Vec::new();
        for _ in 0..count {
            if let Some(record) = self.record()? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// One resource record; `None` when its type or class is not kept.
    fn record(&mut self) -> Result<Option<Record>, WireError> {
        let name = self.name()?;
        let rtype = self.u16()?;
        let class = self.u16()?;
        let raw_ttl = self.u32()?;
        let ttl = if raw_ttl > MAX_TTL { 0 } else { raw_ttl };
        let rdlength = usize::from(self.u16()?);
        let start = self.pos;
        let rdata = self.bytes(rdlength)?;
        let end = self.pos;
        if rtype == TYPE_OPT {
            // Its options are skipped (their bounds were checked above).
            let [extended_rcode, version, _, _] = raw_ttl.to_be_bytes();
            self.edns.get_or_insert(Edns {
                udp_payload: class,
                extended_rcode,
                version,
            });
            return Ok(None);
        }
        if class != CLASS_IN {
            return Ok(None);
        }
        // A name inside RDATA must end exactly where RDATA ends.
        let name_at = |offset: usize| -> Result<String, WireError> {
            match read_name(self.packet, offset)? {
                (name, name_end) if name_end == end => Ok(name),
                _ => Err(WireError::BadRdata),
            }
        };
        let data = match rtype {
            TYPE_A => {
                let octets: [u8; 4] = rdata.try_into().map_err(|_| WireError::BadRdata)?;
                RData::A(Ipv4Addr::from(octets))
            }
            TYPE_AAAA => {
                let octets: [u8; 16] = rdata.try_into().map_err(|_| WireError::BadRdata)?;
                RData::Aaaa(Ipv6Addr::from(octets))
            }
            TYPE_MX => match rdata {
                [hi, lo, _, ..] => RData::Mx {
                    preference: u16::from_be_bytes([*hi, *lo]),
                    exchange: name_at(start + 2)?,
                },
                _ => return Err(WireError::BadRdata),
            },
            TYPE_CNAME => RData::Cname(name_at(start)?),
            TYPE_SOA => {
                let mut inner = Reader {
                    packet: self.packet,
                    pos: start,
                    edns: None,
                };
                inner.name()?;
                inner.name()?;
                inner.bytes(16)?;
                let minimum = inner.u32()?;
                if inner.pos != end {
                    return Err(WireError::BadRdata);
                }
                RData::Soa { minimum }
            }
            _ => return Ok(None),
        };
        Ok(Some(Record { name, ttl, data }))
    }
}

/// Reads the name starting at `start`. Returns it in canonical form and the
/// offset just after its in-place part (after the first pointer, or after
/// the root label).
fn read_name(packet: &[u8], start: usize) -> Result<(String, usize), WireError> {
    let mut out = String::new();
    let mut pos = start;
    // Start of the run of labels being read; a pointer must go before it.
    let mut segment_start = start;
    let mut end = None;
    let mut hops = 0;
    let mut wire_len = 1; // the root label
    loop {
        let len = *packet.get(pos).ok_or(WireError::Truncated)?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                let end = end.unwrap_or(pos + 1);
                return Ok((out, end));
            }
            0x00 => {
                let len = usize::from(len);
                wire_len += len + 1;
                if wire_len > MAX_NAME_WIRE_LEN {
                    return Err(WireError::NameTooLong);
                }
                let label = packet
                    .get(pos + 1..pos + 1 + len)
                    .ok_or(WireError::Truncated)?;
                if !out.is_empty() {
                    out.push('.');
                }
                push_label(&mut out, label);
                pos += 1 + len;
            }
            0xc0 => {
                let low = *packet.get(pos + 1).ok_or(WireError::Truncated)?;
                let target = (usize::from(len & 0x3f) << 8) | usize::from(low);
                if target >= segment_start || target < HEADER_LEN {
                    return Err(WireError::BadPointer);
                }
                hops += 1;
                if hops > MAX_POINTER_HOPS {
                    return Err(WireError::TooManyPointers);
                }
                end.get_or_insert(pos + 2);
                segment_start = target;
                pos = target;
            }
            _ => return Err(WireError::BadLabelType),
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod tests {
    use super::*;

    /// Header: id 0x1234, QR RD RA, given rcode and counts.
    fn header(rcode: u8, counts: [u16; 4]) -> Vec<u8> {
        let mut p = vec![0x12, 0x34, 0x81, 0x80 | rcode];
        for c in counts {
            p.extend_from_slice(&c.to_be_bytes());
        }
        p
    }

    /// Question "example.com" MX IN at offset 12.
    fn question_example_mx(p: &mut Vec<u8>) {
        p.extend_from_slice(b"\x07example\x03com\x00\x00\x0f\x00\x01");
    }

    /// An MX response built by hand with compression: the answer owner points
    /// at the question name, the exchange is "mx1" + pointer to "example.com",
    /// and an additional A record points at the exchange.
    fn compressed_mx_response() -> Vec<u8> {
        let mut p = header(0, [1, 1, 0, 1]);
        question_example_mx(&mut p);
        // answer at offset 29
        p.extend_from_slice(&[0xc0, 0x0c, 0x00, 0x0f, 0x00, 0x01]);
        p.extend_from_slice(&300u32.to_be_bytes());
        p.extend_from_slice(&[0x00, 0x08, 0x00, 0x0a]); // rdlength 8, preference 10
        p.extend_from_slice(b"\x03mx1\xc0\x0c"); // exchange at offset 43
                                                 // additional: owner -> pointer to offset 43
        p.extend_from_slice(&[0xc0, 43, 0x00, 0x01, 0x00, 0x01]);
        p.extend_from_slice(&60u32.to_be_bytes());
        p.extend_from_slice(&[0x00, 0x04, 192, 0, 2, 1]);
        p
    }

    #[test]
    fn query_encoding_matches_rfc1035_layout() {
        let q = encode_query(0xbeef, "Example.COM.", TYPE_MX, false).unwrap();
        let mut want = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(b"\x07Example\x03COM\x00\x00\x0f\x00\x01");
        assert_eq!(q, want);
    }

    /// Issue 11 item 15: queries carried no OPT record.
    #[test]
    fn query_carries_edns0_opt_record() {
        let q = encode_query(0xbeef, "Example.COM.", TYPE_MX, true).unwrap();
        let mut want = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        want.extend_from_slice(b"\x07Example\x03COM\x00\x00\x0f\x00\x01");
        // Root, TYPE 41, CLASS 1232 (0x04d0), TTL 0, RDLEN 0.
        want.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(q, want);
        let back = decode(&q).unwrap();
        assert_eq!(back.edns, Some(Edns::ours()));
        assert!(back.additional.is_empty());
    }

    #[test]
    fn decodes_opt_in_additional_section_with_extended_rcode() {
        let mut msg = Message {
            header: Header {
                id: 9,
                is_response: true,
                rcode: RCODE_NOERROR,
                ..Header::default()
            },
            question: Some(Question {
                name: "example.org".into(),
                qtype: TYPE_MX,
                qclass: CLASS_IN,
            }),
            additional: vec![Record {
                name: "mx.example.org".into(),
                ttl: 60,
                data: RData::A(Ipv4Addr::new(192, 0, 2, 1)),
            }],
            edns: Some(Edns {
                udp_payload: 4096,
                extended_rcode: 1,
                version: 0,
            }),
            ..Message::default()
        };
        let back = decode(&msg.encode().unwrap()).unwrap();
        assert_eq!(back, msg);
        assert_eq!(back.rcode(), RCODE_BADVERS, "header 0 + extended 1 << 4");
        // An OPT with options (here one 4-octet option) is read too.
        msg.edns = None;
        let mut p = msg.encode().unwrap();
        p[11] += 1;
        p.extend_from_slice(&[
            0, 0, 41, 0x02, 0x00, 0, 0, 0, 0, 0, 8, 0, 10, 0, 4, 1, 2, 3, 4,
        ]);
        let back = decode(&p).unwrap();
        assert_eq!(back.edns.map(|e| e.udp_payload), Some(512));
        assert_eq!(back.additional.len(), 1);
        // A truncated OPT is an error, not a panic.
        assert_eq!(decode(&p[..p.len() - 2]), Err(WireError::Truncated));
    }

    #[test]
    fn decodes_compressed_mx_answer() {
        let msg = decode(&compressed_mx_response()).unwrap();
        assert_eq!(msg.header.id, 0x1234);
        assert!(msg.header.is_response);
        assert!(!msg.header.truncated);
        assert_eq!(msg.header.rcode, RCODE_NOERROR);
        let q = msg.question.unwrap();
        assert_eq!(
            (q.name.as_str(), q.qtype, q.qclass),
            ("example.com", TYPE_MX, CLASS_IN)
        );
        assert_eq!(
            msg.answers,
            vec![Record {
                name: "example.com".into(),
                ttl: 300,
                data: RData::Mx {
                    preference: 10,
                    exchange: "mx1.example.com".into()
                },
            }]
        );
        assert_eq!(
            msg.additional,
            vec![Record {
                name: "mx1.example.com".into(),
                ttl: 60,
                data: RData::A(Ipv4Addr::new(192, 0, 2, 1)),
            }]
        );
    }

    #[test]
    fn every_prefix_of_a_valid_packet_is_rejected_cleanly() {
        let p = compressed_mx_response();
        for len in 0..p.len() {
            assert!(decode(&p[..len]).is_err(), "prefix {len} decoded");
        }
    }

    #[test]
    fn header_flags_and_rcode() {
        let mut p = header(RCODE_NXDOMAIN, [1, 0, 0, 0]);
        p[2] |= 0x02; // TC
        question_example_mx(&mut p);
        let (h, q) = decode_head(&p).unwrap();
        assert!(h.truncated && h.is_response && h.recursion_desired);
        assert_eq!(h.rcode, RCODE_NXDOMAIN);
        assert_eq!(h.opcode, OPCODE_QUERY);
        assert_eq!(q.unwrap().name, "example.com");
    }

    #[test]
    fn pointer_to_itself_is_rejected() {
        let mut p = header(0, [1, 0, 0, 0]);
        p.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        assert_eq!(decode(&p), Err(WireError::BadPointer));
    }

    #[test]
    fn pointer_loop_through_a_label_is_rejected() {
        // "a" then a pointer back to the start of the same name.
        let mut p = header(0, [1, 0, 0, 0]);
        p.extend_from_slice(&[0x01, b'a', 0xc0, 0x0c, 0, 1, 0, 1]);
        assert_eq!(decode(&p), Err(WireError::BadPointer));
    }

    #[test]
    fn two_pointers_to_each_other_are_rejected() {
        // Answer owner points back at offset 12 which points forward to it.
        let mut p = header(0, [1, 1, 0, 0]);
        p.extend_from_slice(&[0xc0, 18, 0, 1, 0, 1]); // question at 12 -> 18
        p.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
        assert_eq!(decode(&p), Err(WireError::BadPointer));
    }

    #[test]
    fn forward_pointer_is_rejected() {
        let mut p = header(0, [1, 0, 0, 0]);
        p.extend_from_slice(&[0xc0, 0x12, 0, 1, 0, 1, 0x01, b'a', 0x00]);
        assert_eq!(decode(&p), Err(WireError::BadPointer));
    }

    #[test]
    fn pointer_into_header_is_rejected() {
        let mut p = header(0, [1, 0, 0, 0]);
        p.extend_from_slice(&[0xc0, 0x02, 0, 1, 0, 1]);
        assert_eq!(decode(&p), Err(WireError::BadPointer));
    }

    #[test]
    fn too_many_pointer_hops_are_rejected() {
        // A chain of MAX_POINTER_HOPS + 1 pointers, each to the previous one.
        let mut p = header(0, [1, 0, 0, 0]);
        p.extend_from_slice(&[0x01, b'a', 0x00]);
        let mut previous = 12u8;
        for _ in 0..=MAX_POINTER_HOPS {
            let here = p.len() as u8;
            p.extend_from_slice(&[0xc0, previous]);
            previous = here;
        }
        assert_eq!(
            read_name(&p, usize::from(previous)),
            Err(WireError::TooManyPointers)
        );
        assert_eq!(read_name(&p, usize::from(previous) - 2).unwrap().0, "a");
    }

    #[test]
    fn oversize_name_is_rejected() {
        // Four 63-octet labels: 4 * 64 + 1 = 257 octets.
        let mut p = header(0, [1, 0, 0, 0]);
        for _ in 0..4 {
            p.push(63);
            p.extend_from_slice(&[b'x'; 63]);
        }
        p.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(decode(&p), Err(WireError::NameTooLong));
    }

    #[test]
    fn oversize_name_through_pointers_is_rejected() {
        // 3 * 64 inline octets, then a pointer to another 63-octet label.
        let mut p = header(0, [1, 1, 0, 0]);
        p.push(63);
        p.extend_from_slice(&[b'y'; 63]);
        p.push(0);
        p.extend_from_slice(&[0, 1, 0, 1]);
        for _ in 0..3 {
            p.push(63);
            p.extend_from_slice(&[b'x'; 63]);
        }
        p.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
        assert_eq!(decode(&p), Err(WireError::NameTooLong));
    }

    #[test]
    fn longest_legal_name_decodes() {
        // 3 * 64 + 62 + 1 = 255 octets.
        let mut p = header(0, [1, 0, 0, 0]);
        for _ in 0..3 {
            p.push(63);
            p.extend_from_slice(&[b'x'; 63]);
        }
        p.push(61);
        p.extend_from_slice(&[b'x'; 61]);
        p.extend_from_slice(&[0, 0, 1, 0, 1]);
        let name = decode(&p).unwrap().question.unwrap().name;
        assert_eq!(name.len(), MAX_NAME_TEXT_LEN);
    }

    #[test]
    fn extended_label_type_is_rejected() {
        let mut p = header(0, [1, 0, 0, 0]);
        p.extend_from_slice(&[0x41, 0, 0, 1, 0, 1]);
        assert_eq!(decode(&p), Err(WireError::BadLabelType));
    }

    #[test]
    fn bad_a_rdata_length_is_rejected() {
        let mut p = header(0, [0, 1, 0, 0]);
        p.extend_from_slice(&[0x01, b'a', 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 3, 1, 2, 3]);
        assert_eq!(decode(&p), Err(WireError::BadRdata));
    }

    #[test]
    fn cname_rdata_must_end_with_its_name() {
        // rdlength 4 but the name "b" takes 3 octets.
        let mut p = header(0, [0, 1, 0, 0]);
        p.extend_from_slice(&[0x01, b'a', 0, 0, 5, 0, 1, 0, 0, 0, 1, 0, 4, 1, b'b', 0, 0]);
        assert_eq!(decode(&p), Err(WireError::BadRdata));
    }

    #[test]
    fn unknown_types_and_classes_are_skipped() {
        let mut p = header(0, [0, 3, 0, 0]);
        // TXT record
        p.extend_from_slice(&[0x01, b'a', 0, 0, 16, 0, 1, 0, 0, 0, 1, 0, 3, 2, b'h', b'i']);
        // A record of class CH
        p.extend_from_slice(&[0x01, b'a', 0, 0, 1, 0, 3, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
        // A record, TTL with the top bit set
        p.extend_from_slice(&[0x01, b'A', 0, 0, 1, 0, 1, 0x80, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
        let msg = decode(&p).unwrap();
        assert_eq!(
            msg.answers,
            vec![Record {
                name: "a".into(),
                ttl: 0,
                data: RData::A(Ipv4Addr::new(1, 2, 3, 4)),
            }]
        );
    }

    #[test]
    fn two_questions_are_rejected() {
        let mut p = header(0, [2, 0, 0, 0]);
        question_example_mx(&mut p);
        question_example_mx(&mut p);
        assert_eq!(decode_head(&p), Err(WireError::QuestionCount));
    }

    #[test]
    fn odd_octets_round_trip_through_escapes() {
        let mut p = header(0, [1, 0, 0, 0]);
        p.extend_from_slice(&[0x04, b'a', b'.', 0x00, b'\\', 0x01, b'B', 0x00, 0, 1, 0, 1]);
        let name = decode(&p).unwrap().question.unwrap().name;
        assert_eq!(name, "a\\.\\000\\\\.b");
        let q = encode_query(0, &name, TYPE_A, false).unwrap();
        assert_eq!(
            &q[12..20],
            &[0x04, b'a', b'.', 0x00, b'\\', 0x01, b'b', 0x00]
        );
    }

    #[test]
    fn message_round_trips() {
        let msg = Message {
            header: Header {
                id: 7,
                is_response: true,
                recursion_desired: true,
                recursion_available: true,
                rcode: RCODE_NXDOMAIN,
                ..Header::default()
            },
            question: Some(Question {
                name: "mail.example.org".into(),
                qtype: TYPE_AAAA,
                qclass: CLASS_IN,
            }),
            answers: vec![
                Record {
                    name: "mail.example.org".into(),
                    ttl: 5,
                    data: RData::Cname("x.example.net".into()),
                },
                Record {
                    name: "x.example.net".into(),
                    ttl: 6,
                    data: RData::Aaaa("2001:db8::1".parse().unwrap()),
                },
            ],
            authority: vec![Record {
                name: "example.net".into(),
                ttl: 900,
                data: RData::Soa { minimum: 300 },
            }],
            additional: vec![Record {
                name: "example.org".into(),
                ttl: 1,
                data: RData::Mx {
                    preference: 0,
                    exchange: String::new(),
                },
            }],
            edns: None,
        };
        assert_eq!(decode(&msg.encode().unwrap()).unwrap(), msg);
    }

    #[test]
    fn normalize_name_limits() {
        assert_eq!(
            normalize_name("Mail.Example.COM.").unwrap(),
            "mail.example.com"
        );
        assert_eq!(normalize_name(""), Err(NameError::Empty));
        assert_eq!(normalize_name("."), Err(NameError::Empty));
        assert_eq!(normalize_name("a..b"), Err(NameError::EmptyLabel));
        assert_eq!(normalize_name(".a"), Err(NameError::EmptyLabel));
        assert_eq!(normalize_name("a b"), Err(NameError::BadCharacter));
        assert_eq!(normalize_name("bücher.de"), Err(NameError::BadCharacter));
        assert_eq!(normalize_name("a\\"), Err(NameError::BadCharacter));
        assert_eq!(normalize_name("a\\256"), Err(NameError::BadCharacter));
        let label63 = "x".repeat(63);
        assert!(normalize_name(&format!("{label63}.com")).is_ok());
        assert_eq!(
            normalize_name(&format!("{label63}x.com")),
            Err(NameError::LabelTooLong)
        );
        // 253 characters: 3 * "63 + dot" + 61.
        let longest = format!("{label63}.{label63}.{label63}.{}", "x".repeat(61));
        assert_eq!(longest.len(), MAX_NAME_TEXT_LEN);
        assert!(normalize_name(&longest).is_ok());
        assert!(normalize_name(&format!("{longest}.")).is_ok());
        assert_eq!(
            normalize_name(&format!("{longest}x")),
            Err(NameError::NameTooLong)
        );
    }

    /// xorshift64 for the fuzz loop.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn mutated_packets_never_panic() {
        let seeds = [
            compressed_mx_response(),
            encode_query(1, "a.example", TYPE_A, true).unwrap(),
            Message {
                header: Header {
                    is_response: true,
                    ..Header::default()
                },
                question: Some(Question {
                    name: "example.org".into(),
                    qtype: TYPE_MX,
                    qclass: CLASS_IN,
                }),
                answers: vec![Record {
                    name: "example.org".into(),
                    ttl: 1,
                    data: RData::Cname("b.example".into()),
                }],
                authority: vec![Record {
                    name: "example".into(),
                    ttl: 1,
                    data: RData::Soa { minimum: 1 },
                }],
                additional: vec![],
                edns: Some(Edns::ours()),
            }
            .encode()
            .unwrap(),
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut decoded = 0;
        for i in 0..30_000 {
            let mut p = seeds[i % seeds.len()].clone();
            let edits = 1 + next(&mut state) % 4;
            for _ in 0..edits {
                let r = next(&mut state);
                let at = (r >> 8) as usize % (p.len() + 1);
                match r % 5 {
                    0 => p.truncate(at),
                    1 => p.insert(at, (r >> 32) as u8),
                    2 if at < p.len() => p[at] = (r >> 32) as u8,
                    3 if at + 1 < p.len() => {
                        p[at] = 0xc0 | ((r >> 40) as u8 & 0x01);
                        p[at + 1] = (r >> 32) as u8;
                    }
                    _ if at < p.len() => p[at] ^= 1 << ((r >> 32) % 8),
                    _ => {}
                }
            }
            if decode(&p).is_ok() {
                decoded += 1;
            }
            let _ = decode_head(&p);
        }
        // The mutations must leave some packets valid, or the test is weak.
        assert!(decoded > 100, "only {decoded} mutated packets decoded");
    }
}
