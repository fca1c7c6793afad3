//! Kernel images: the x86 bzImage container (setup header, compressed
//! payload) and the vmlinux ELF inside it.
//!
//! The boot protocol (Documentation/arch/x86/boot.rst) puts the setup header
//! at offset 0x1f1 of the image; from protocol 2.08 on it says where the
//! compressed payload lies (`payload_offset`, `payload_length`, relative to
//! the protected-mode code after the real-mode setup sectors). The payload
//! is the kernel's `vmlinux` ELF, stripped, possibly with its relocation
//! table appended, compressed with the method chosen at build time; we tell
//! which from the data's magic bytes.

use std::io::Read;

use linux_loader::loader::bootparam::setup_header;
use serde::Serialize;
use vm_memory::ByteValued;

use crate::LoaderError;

/// Offset of the setup header in the image.
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// "HdrS", the setup header magic.
const HEADER_MAGIC: u32 = 0x5372_6448;
/// The boot sector signature.
const BOOT_FLAG: u16 = 0xaa55;
/// First protocol version with `payload_offset`/`payload_length`.
const PAYLOAD_PROTOCOL: u16 = 0x0208;
/// The largest decompressed kernel we accept. Debian's 686 vmlinux is about
/// 30 MiB; a payload that inflates past this is not a kernel we can run.
pub const MAX_VMLINUX_BYTES: u64 = 512 << 20;
/// Memory the xz and lzma decoders may use (their dictionaries). Linux
/// payloads use at most a few MiB; a header asking for more is refused.
const DECODER_MEMORY_LIMIT: u64 = 256 << 20;

/// Compression methods a Linux payload can use (the `CONFIG_KERNEL_*`
/// choices).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (`CONFIG_KERNEL_GZIP`).
    Gzip,
    /// xz with the x86 BCJ filter (`CONFIG_KERNEL_XZ`, Debian's choice).
    Xz,
    /// Legacy .lzma (`CONFIG_KERNEL_LZMA`).
    Lzma,
    /// zstd (`CONFIG_KERNEL_ZSTD`).
    Zstd,
    /// bzip2 (`CONFIG_KERNEL_BZIP2`).
    Bzip2,
    /// LZ4 legacy frames (`CONFIG_KERNEL_LZ4`).
    Lz4,
    /// LZO (`CONFIG_KERNEL_LZO`).
    Lzo,
}

impl Compression {
    /// Recognises a payload by its magic bytes.
    #[must_use]
    pub fn detect(payload: &[u8]) -> Option<Self> {
        const MAGICS: [(&[u8], Compression); 8] = [
            (&[0x1f, 0x8b], Compression::Gzip),
            (&[0x1f, 0x9e], Compression::Gzip),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Compression::Xz),
            (&[0x5d, 0x00, 0x00], Compression::Lzma),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            (b"BZh", Compression::Bzip2),
            (&[0x02, 0x21, 0x4c, 0x18], Compression::Lz4),
            (&[0x89, b'L', b'Z', b'O'], Compression::Lzo),
        ];
        MAGICS
            .iter()
            .find(|(magic, _)| payload.starts_with(magic))
            .map(|&(_, method)| method)
    }

    /// Name as in the kernel's configuration.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Xz => "xz",
            Self::Lzma => "lzma",
            Self::Zstd => "zstd",
            Self::Bzip2 => "bzip2",
            Self::Lz4 => "lz4",
            Self::Lzo => "lzo",
        }
    }
}

/// What the setup header of a bzImage says.
#[derive(Clone, Debug, Serialize)]
pub struct BzImageInfo {
    /// Boot protocol version, e.g. 0x020f.
    pub protocol: u16,
    /// Real-mode setup sectors (after the boot sector).
    pub setup_sects: u8,
    /// Load address of the protected-mode code.
    pub code32_start: u32,
    /// The kernel's version string, when the header points at one.
    pub kernel_version: Option<String>,
    /// Offset of the protected-mode code in the file.
    pub protected_mode_offset: usize,
    /// Offset of the compressed payload in the file.
    pub payload_offset: usize,
    /// Length of the compressed payload.
    pub payload_length: usize,
    /// How the payload is compressed.
    pub compression: Compression,
}

/// Parses a bzImage's setup header and locates its payload.
pub fn parse_bzimage(image: &[u8]) -> Result<BzImageInfo, LoaderError> {
    let header_len = std::mem::size_of::<setup_header>();
    let header_bytes = image
        .get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + header_len)
        .ok_or(LoaderError::Truncated {
            what: "setup header",
            needed: SETUP_HEADER_OFFSET + header_len,
            found: image.len(),
        })?;
    let header = setup_header::from_slice(header_bytes).ok_or(LoaderError::NotAKernel {
        reason: "setup header does not fit".into(),
    })?;
    // Packed fields: copy them out before use.
    let (boot_flag, magic, protocol) = (header.boot_flag, header.header, header.version);
    if boot_flag != BOOT_FLAG || magic != HEADER_MAGIC {
        return Err(LoaderError::NotAKernel {
            reason: "no x86 boot sector signature or \"HdrS\" setup header".into(),
        });
    }
    if protocol < PAYLOAD_PROTOCOL {
        return Err(LoaderError::OldProtocol(protocol));
    }
    let setup_sects = match header.setup_sects {
        // Protocol: 0 means 4.
        0 => 4,
        sects => sects,
    };
    let protected_mode_offset = (usize::from(setup_sects) + 1) * 512;
    let payload_offset = protected_mode_offset + header.payload_offset as usize;
    let payload_length = header.payload_length as usize;
    let payload = image
        .get(payload_offset..payload_offset + payload_length)
        .ok_or(LoaderError::Truncated {
            what: "compressed payload",
            needed: payload_offset + payload_length,
            found: image.len(),
        })?;
    let compression = Compression::detect(payload).ok_or_else(|| {
        LoaderError::UnknownCompression(
            payload
                .iter()
                .take(6)
                .map(|byte| format!("{byte:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
        )
    })?;
    let kernel_version = match header.kernel_version {
        0 => None,
        offset => version_string(image, usize::from(offset) + 0x200),
    };
    Ok(BzImageInfo {
        protocol,
        setup_sects,
        code32_start: header.code32_start,
        kernel_version,
        protected_mode_offset,
        payload_offset,
        payload_length,
        compression,
    })
}

fn version_string(image: &[u8], at: usize) -> Option<String> {
    let bytes = image.get(at..)?;
    let end = bytes.iter().take(256).position(|&byte| byte == 0)?;
    std::str::from_utf8(&bytes[..end]).ok().map(str::to_owned)
}

/// The ARM zImage's magic word at offset 0x24 (arch/arm/boot/compressed/head.S).
const ZIMAGE_MAGIC: u32 = 0x016f_2818;

/// An ARM zImage and what it holds.
#[derive(Clone, Debug, Serialize)]
pub struct ZImage {
    /// Offset of the compressed kernel in the file.
    pub payload_offset: usize,
    /// How it is compressed.
    pub compression: Compression,
    /// The kernel `Image`, inflated.
    #[serde(skip)]
    pub image: Vec<u8>,
}

/// Finds and inflates an ARM zImage's kernel. The decompressor's header
/// says nothing of where its payload sits, and its code holds the xz
/// magic as a constant (Debian's armmp: a false start at 0xd928, the
/// payload at 0xe6a5): of the streams that inflate, the largest is the
/// kernel. Only the first [`MAX_ZIMAGE_CANDIDATES`] places that start like
/// a stream are tried, which bounds the work a crafted file can cause.
pub fn parse_zimage(file: &[u8]) -> Result<ZImage, LoaderError> {
    let magic = file
        .get(0x24..0x28)
        .map(|bytes| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        .ok_or(LoaderError::Truncated {
            what: "zImage header",
            needed: 0x28,
            found: file.len(),
        })?;
    if magic != ZIMAGE_MAGIC {
        return Err(LoaderError::NotAKernel {
            reason: format!("no ARM zImage magic at offset 0x24 ({magic:#010x})"),
        });
    }
    // Magics unlikely to occur by chance in the decompressor's code.
    const STRONG: [(&[u8], Compression); 4] = [
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Compression::Xz),
        (&[0x1f, 0x8b, 0x08], Compression::Gzip),
        (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
        (b"BZh9", Compression::Bzip2),
    ];
    let mut last_error = None;
    let mut best: Option<ZImage> = None;
    let candidates = (0x28..file.len()).filter_map(|offset| {
        let rest = &file[offset..];
        STRONG
            .iter()
            .find(|(magic, _)| rest.starts_with(magic))
            .map(|&(_, compression)| (offset, compression))
    });
    for (tried, (offset, compression)) in candidates.enumerate() {
        if tried == MAX_ZIMAGE_CANDIDATES {
            if best.is_none() {
                last_error = Some(LoaderError::UnknownCompression(format!(
                    "no compressed kernel among the first {MAX_ZIMAGE_CANDIDATES} places in the zImage that start like one"
                )));
            }
            break;
        }
        let rest = &file[offset..];
        // The stream is followed by the Image's size and more: an xz
        // stream ends at its footer, whose flags repeat the header's.
        let rest = if compression == Compression::Xz {
            xz_stream(rest).unwrap_or(rest)
        } else {
            rest
        };
        match decompress(rest, compression, MAX_VMLINUX_BYTES) {
            Ok(image)
                if image.len() > 0x1000
                    && best
                        .as_ref()
                        .is_none_or(|best| image.len() > best.image.len()) =>
            {
                best = Some(ZImage {
                    payload_offset: offset,
                    compression,
                    image,
                });
            }
            Ok(_) => {}
            Err(error) => last_error = Some(error),
        }
    }
    best.ok_or_else(|| {
        last_error.unwrap_or_else(|| {
            LoaderError::UnknownCompression("no compressed kernel found in the zImage".into())
        })
    })
}

/// Most places in a zImage tried as the start of its compressed kernel: a
/// real one has the decompressor's copy of the magic and the payload
/// (Debian's armmp: 2), a crafted one could have a stream at every byte.
pub const MAX_ZIMAGE_CANDIDATES: usize = 16;

/// The xz stream at the start of `data`, cut after its footer (12 bytes
/// ending in "YZ", at a multiple of 4 bytes, with the header's stream
/// flags), the first such footer in the data (a chance match inside the
/// compressed data is a 1 in 2^32 event per place, and fails to inflate).
fn xz_stream(data: &[u8]) -> Option<&[u8]> {
    let flags = data.get(6..8)?;
    (24..=data.len())
        .filter(|end| end % 4 == 0)
        .find(|&end| data[end - 2..end] == *b"YZ" && data[end - 4..end - 2] == *flags && end >= 24)
        .map(|end| &data[..end])
}

/// Inflates a payload, refusing to produce more than `limit` bytes.
pub fn decompress(
    payload: &[u8],
    compression: Compression,
    limit: u64,
) -> Result<Vec<u8>, LoaderError> {
    let reader: Box<dyn Read + '_> = match compression {
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(payload)),
        Compression::Xz | Compression::Lzma => {
            let stream = if compression == Compression::Xz {
                liblzma::stream::Stream::new_stream_decoder(DECODER_MEMORY_LIMIT, 0)
            } else {
                liblzma::stream::Stream::new_lzma_decoder(DECODER_MEMORY_LIMIT)
            }
            .map_err(|error| LoaderError::Decompress {
                compression: compression.name(),
                source: error.into(),
            })?;
            Box::new(liblzma::read::XzDecoder::new_stream(payload, stream))
        }
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(payload)
                .map_err(|source| LoaderError::Decompress {
                    compression: compression.name(),
                    source,
                })?
                .single_frame(),
        ),
        Compression::Bzip2 => Box::new(bzip2::read::BzDecoder::new(payload)),
        Compression::Lz4 | Compression::Lzo => {
            return Err(LoaderError::UnsupportedCompression(compression.name()));
        }
    };
    let mut out = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|source| LoaderError::Decompress {
            compression: compression.name(),
            source,
        })?;
    if out.len() as u64 > limit {
        return Err(LoaderError::TooLarge(limit));
    }
    Ok(out)
}

/// Builds a minimal bzImage around an already compressed payload: a boot
/// sector and one setup sector whose header carries boot `protocol`, the
/// version string "6.1" and the payload's place, then the payload. Real
/// kernels carry real-mode setup code and a decompressor as well; the
/// planner and loader only need the header. Used by tests.
#[must_use]
pub fn wrap_in_bzimage(payload: &[u8], protocol: u16) -> Vec<u8> {
    let mut image = vec![0u8; 2 * 512];
    image[0x1f1] = 1; // setup_sects
    image[0x1fe..0x200].copy_from_slice(&BOOT_FLAG.to_le_bytes());
    image[0x202..0x206].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
    image[0x206..0x208].copy_from_slice(&protocol.to_le_bytes());
    image[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes()); // version at 0x300
    image[0x300..0x304].copy_from_slice(b"6.1\0");
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    // payload_offset 0: right after the setup sector.
    #[allow(clippy::cast_possible_truncation)] // test payloads are small
    let length = payload.len() as u32;
    image[0x24c..0x250].copy_from_slice(&length.to_le_bytes());
    image.extend_from_slice(payload);
    image
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).expect("in-memory write");
        encoder.finish().expect("in-memory gzip")
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 1);
        encoder.write_all(data).expect("in-memory write");
        encoder.finish().expect("in-memory xz")
    }

    #[test]
    fn a_zimage_gives_its_kernel_past_a_false_magic_and_trailing_bytes() {
        let kernel: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i * 7).to_le_bytes())
            .collect();
        let mut file = vec![0u8; 0x200];
        file[0x24..0x28].copy_from_slice(&ZIMAGE_MAGIC.to_le_bytes());
        // The decompressor's code holds the magic as a constant.
        file[0x100..0x106].copy_from_slice(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]);
        let payload = xz(&kernel);
        file.extend_from_slice(&payload);
        // The Image's size and padding after the stream.
        file.extend_from_slice(&u32::try_from(kernel.len()).expect("small").to_le_bytes());
        file.extend_from_slice(&[0x5a; 60]);
        let zimage = parse_zimage(&file).expect("a zImage");
        assert_eq!(zimage.payload_offset, 0x200);
        assert_eq!(zimage.compression, Compression::Xz);
        assert_eq!(zimage.image, kernel);
        assert!(matches!(
            parse_zimage(&[0u8; 0x100]),
            Err(LoaderError::NotAKernel { .. })
        ));
        file[0x200..0x210].fill(0);
        assert!(parse_zimage(&file).is_err(), "no stream inflates");
    }

    #[test]
    fn a_zimage_full_of_stream_starts_is_refused_quickly() {
        // Every few bytes the start of a gzip stream that inflates to 4
        // MiB: only the first MAX_ZIMAGE_CANDIDATES are tried.
        let stream = gzip(&vec![0u8; 4 << 20]);
        let mut file = vec![0u8; 0x28];
        file[0x24..0x28].copy_from_slice(&ZIMAGE_MAGIC.to_le_bytes());
        for _ in 0..2000 {
            file.extend_from_slice(&[0x1f, 0x8b, 0x08]);
        }
        file.extend_from_slice(&stream);
        let error = parse_zimage(&file).expect_err("nothing inflates among the first");
        assert!(error.to_string().contains("first 16 places"), "{error}");
        // Within the bound, the stream is found.
        let mut near = file[..0x28].to_vec();
        near.extend_from_slice(&[0x1f, 0x8b, 0x08, 0]);
        near.extend_from_slice(&stream);
        assert_eq!(parse_zimage(&near).expect("found").image.len(), 4 << 20);
    }

    #[test]
    fn finds_and_inflates_gzip_and_xz_payloads() {
        let vmlinux = b"\x7fELF and the rest of a kernel".repeat(100);
        for (payload, method) in [
            (gzip(&vmlinux), Compression::Gzip),
            (xz(&vmlinux), Compression::Xz),
        ] {
            let image = wrap_in_bzimage(&payload, 0x020f);
            let info = parse_bzimage(&image).expect("valid header");
            assert_eq!(info.compression, method);
            assert_eq!(info.protocol, 0x020f);
            assert_eq!(info.kernel_version.as_deref(), Some("6.1"));
            assert_eq!(info.payload_offset, 1024);
            let inflated = decompress(
                &image[info.payload_offset..info.payload_offset + info.payload_length],
                info.compression,
                MAX_VMLINUX_BYTES,
            )
            .expect("inflates");
            assert_eq!(inflated, vmlinux);
        }
    }

    #[test]
    fn kernel_style_zstd_with_trailing_size_inflates() {
        let vmlinux = b"kernel".repeat(1000);
        let mut payload = zstd::stream::encode_all(&vmlinux[..], 3).expect("in-memory zstd");
        // The kernel appends the uncompressed size after the frame.
        payload.extend_from_slice(&6000u32.to_le_bytes());
        let inflated =
            decompress(&payload, Compression::Zstd, MAX_VMLINUX_BYTES).expect("inflates");
        assert_eq!(inflated, vmlinux);
    }

    #[test]
    fn refuses_what_is_not_a_bzimage() {
        assert!(matches!(
            parse_bzimage(b"hello"),
            Err(LoaderError::Truncated { .. })
        ));
        assert!(matches!(
            parse_bzimage(&vec![0u8; 4096]),
            Err(LoaderError::NotAKernel { .. })
        ));
        let old = wrap_in_bzimage(&gzip(b"x"), 0x0206);
        assert!(matches!(
            parse_bzimage(&old),
            Err(LoaderError::OldProtocol(0x0206))
        ));
    }

    #[test]
    fn refuses_truncated_and_unknown_payloads() {
        let image = wrap_in_bzimage(&gzip(b"some kernel"), 0x020f);
        let cut = &image[..image.len() - 4];
        assert!(matches!(
            parse_bzimage(cut),
            Err(LoaderError::Truncated { .. })
        ));
        let odd = wrap_in_bzimage(b"\x00\x01\x02\x03 not compressed", 0x020f);
        assert!(matches!(
            parse_bzimage(&odd),
            Err(LoaderError::UnknownCompression(_))
        ));
        let lz4 = wrap_in_bzimage(&[0x02, 0x21, 0x4c, 0x18, 0, 0], 0x020f);
        let info = parse_bzimage(&lz4).expect("header is fine");
        assert!(matches!(
            decompress(&lz4[info.payload_offset..], info.compression, 1 << 20),
            Err(LoaderError::UnsupportedCompression("lz4"))
        ));
    }

    #[test]
    fn corrupt_or_oversized_payloads_are_errors() {
        let mut payload = xz(&vec![7u8; 100_000]);
        let middle = payload.len() / 2;
        payload[middle] ^= 0xff;
        assert!(matches!(
            decompress(&payload, Compression::Xz, MAX_VMLINUX_BYTES),
            Err(LoaderError::Decompress { .. })
        ));
        let big = gzip(&vec![0u8; 10_000]);
        assert!(matches!(
            decompress(&big, Compression::Gzip, 1000),
            Err(LoaderError::TooLarge(1000))
        ));
        let truncated = &gzip(&vec![1u8; 10_000])[..20];
        assert!(matches!(
            decompress(truncated, Compression::Gzip, MAX_VMLINUX_BYTES),
            Err(LoaderError::Decompress { .. })
        ));
    }
}
