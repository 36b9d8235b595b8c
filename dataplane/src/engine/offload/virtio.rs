//! The virtio-net header (`struct virtio_net_hdr` in
//! `include/uapi/linux/virtio_net.h`) that prefixes every read from and
//! write to a TUN opened with `IFF_VNET_HDR`.
//!
//! Layout, 10 bytes: `flags` (u8), `gso_type` (u8), `hdr_len`, `gso_size`,
//! `csum_start`, `csum_offset` (u16 each). The u16 fields are in "virtio
//! byte order": for the legacy header the TUN driver uses, that is the
//! host's byte order unless `TUNSETVNETLE`/`TUNSETVNETBE` says otherwise
//! (`tun_is_little_endian`). corewire always encodes little-endian: correct
//! as-is on x86-64 and little-endian arm64, and a big-endian host makes the
//! TUN agree with `TUNSETVNETLE(1)`.

use super::OffloadError;

/// Length of `struct virtio_net_hdr`, the TUN's default `TUNSETVNETHDRSZ`.
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the transport checksum is partial; complete it over the bytes
/// from `csum_start` and store it at `csum_start + csum_offset`. The field
/// already holds the pseudo-header sum (the kernel's `CHECKSUM_PARTIAL`).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum is known good (only set by the kernel on receive
/// into a guest; ignored here).
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

/// `gso_type`: a plain packet, no segmentation.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: a TCP over IPv4 super-packet (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: legacy UDP fragmentation offload (UFO); never requested by
/// corewire, refused on reads.
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `gso_type`: a TCP over IPv6 super-packet (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type`: a UDP super-packet cut into datagrams of `gso_size` (USO),
/// IPv4 or IPv6.
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP flow uses ECN, so CWR on the super-packet belongs
/// on its first segment only (the kernel's `SKB_GSO_TCP_ECN`).
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// A decoded `struct virtio_net_hdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*` bits.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`, possibly with [`VIRTIO_NET_HDR_GSO_ECN`].
    pub gso_type: u8,
    /// Bytes of headers (IP plus transport) before the payload. On reads the
    /// kernel fills it with the linear length of its buffer, a hint only, so
    /// segmentation derives the header length from the headers themselves.
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS, or the UDP datagram payload).
    pub gso_size: u16,
    /// Where the checksummed region starts: the transport header.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start` (16 TCP, 6 UDP).
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// The all-zero header: a plain packet with a complete checksum. Every
    /// packet written alone is preceded by these bytes.
    pub const NONE: Self = Self {
        flags: 0,
        gso_type: VIRTIO_NET_HDR_GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Decodes the header at the start of `buf` (a whole TUN read).
    pub fn parse(buf: &[u8]) -> Result<Self, OffloadError> {
        let Some(b) = buf.first_chunk::<VNET_HDR_LEN>() else {
            return Err(OffloadError::ShortVnetHeader(buf.len()));
        };
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// The header's 10 bytes, as written before a packet.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// Whether the transport checksum is partial and must be completed.
    pub fn needs_csum(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }

    /// The GSO type without the ECN bit.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !VIRTIO_NET_HDR_GSO_ECN
    }

    /// Whether the packet is a super-packet to be segmented.
    pub fn is_gso(&self) -> bool {
        self.gso_kind() != VIRTIO_NET_HDR_GSO_NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_little_endian_in_field_order() {
        let h = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
            hdr_len: 0x0102,
            gso_size: 0x0304,
            csum_start: 0x0506,
            csum_offset: 0x0708,
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 0x81, 2, 1, 4, 3, 6, 5, 8, 7]);
        assert_eq!(VirtioNetHdr::parse(&b), Ok(h));
        assert!(h.needs_csum() && h.is_gso());
        assert_eq!(h.gso_kind(), VIRTIO_NET_HDR_GSO_TCPV4);
    }

    #[test]
    fn none_is_ten_zero_bytes() {
        assert_eq!(VirtioNetHdr::NONE.to_bytes(), [0; VNET_HDR_LEN]);
        assert_eq!(VirtioNetHdr::default(), VirtioNetHdr::NONE);
        assert!(!VirtioNetHdr::NONE.is_gso());
    }

    #[test]
    fn parse_ignores_trailing_bytes_and_rejects_short() {
        let mut b = [0u8; 14];
        b[4] = 100;
        assert_eq!(VirtioNetHdr::parse(&b).map(|h| h.gso_size), Ok(100));
        for len in 0..VNET_HDR_LEN {
            assert_eq!(
                VirtioNetHdr::parse(&b[..len]),
                Err(OffloadError::ShortVnetHeader(len))
            );
        }
    }
}
