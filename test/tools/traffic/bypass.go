package traffic

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// BypassOptions describe a flood of raw frames sent the way a container with CAP_NET_RAW (Docker's
// default) can send past its own interface's qdisc and tc egress hook: an AF_PACKET socket with
// PACKET_QDISC_BYPASS. The frames are IPv4/UDP so the host forwards or delivers them like any other.
type BypassOptions struct {
	Netns    string           // namespace of Dev; "" for the caller's own
	Dev      string           // interface to send on (a container's eth0)
	DstMAC   net.HardwareAddr // next hop: the host-side veth or the bridge's MAC
	DstIP    net.IP           // IPv4 destination
	DstPort  int              // UDP destination port
	Size     int              // frame length including the Ethernet header, 60..1514
	Duration time.Duration    // required, at most MaxDuration
	// MaxFrames bounds the count as well (0: 10 million).
	MaxFrames int64
}

// BypassResult is what the socket accepted: Frames/Bytes were handed to the driver, Refused frames
// were turned away (a full backlog on the peer: ENOBUFS and the like).
type BypassResult struct {
	Frames  int64         `json:"frames"`
	Bytes   int64         `json:"bytes"`
	Refused int64         `json:"refused"`
	Elapsed time.Duration `json:"elapsed_ns"`
}

// BitsPerSec is the rate the sender put on its interface.
func (r BypassResult) BitsPerSec() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Bytes) * 8 / r.Elapsed.Seconds()
}

// BypassFlood sends o.Size-byte frames as fast as the socket takes them until o.Duration, o.MaxFrames
// or ctx ends it.
func BypassFlood(ctx context.Context, o BypassOptions) (BypassResult, error) {
	if o.Duration <= 0 || o.Duration > MaxDuration {
		return BypassResult{}, fmt.Errorf("bypass flood duration %s: must be in (0, %s]", o.Duration, MaxDuration)
	}
	if o.Size < 60 || o.Size > 1514 {
		return BypassResult{}, fmt.Errorf("bypass flood frame size %d: must be in 60..1514", o.Size)
	}
	if o.MaxFrames <= 0 {
		o.MaxFrames = 10_000_000
	}
	dst := o.DstIP.To4()
	if dst == nil || len(o.DstMAC) != 6 {
		return BypassResult{}, fmt.Errorf("bypass flood: need an IPv4 destination and a 6-byte MAC, got %s %s", o.DstIP, o.DstMAC)
	}
	var (
		fd    = -1
		frame []byte
	)
	open := func() error {
		ifc, err := net.InterfaceByName(o.Dev)
		if err != nil {
			return err
		}
		src, err := ipv4Of(ifc)
		if err != nil {
			return err
		}
		frame = udpFrame(ifc.HardwareAddr, o.DstMAC, src, dst, o.DstPort, o.Size)
		// Protocol 0: this socket only sends, it receives nothing.
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0); err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifc.Index}); err != nil {
			return fmt.Errorf("bind to %s: %w", o.Dev, err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			return fmt.Errorf("PACKET_QDISC_BYPASS: %w", err)
		}
		return nil
	}
	var err error
	if o.Netns == "" {
		err = open()
	} else {
		err = InNetns(o.Netns, open)
	}
	if fd >= 0 {
		defer unix.Close(fd)
	}
	if err != nil {
		return BypassResult{}, fmt.Errorf("bypass flood on %s: %w", o.Dev, err)
	}
	ctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	var res BypassResult
	start := time.Now()
	for n := int64(0); n < o.MaxFrames; n++ {
		if n%256 == 0 && ctx.Err() != nil {
			break
		}
		_, err := unix.Write(fd, frame)
		switch {
		case err == nil:
			res.Frames++
			res.Bytes += int64(len(frame))
		case errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENETDOWN), errors.Is(err, unix.EBUSY):
			res.Refused++
		default:
			return res, fmt.Errorf("bypass flood on %s: write: %w", o.Dev, err)
		}
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

func ipv4Of(ifc *net.Interface) (net.IP, error) {
	addrs, err := ifc.Addrs()
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			return n.IP.To4(), nil
		}
	}
	return nil, fmt.Errorf("%s has no IPv4 address", ifc.Name)
}

// udpFrame is one Ethernet + IPv4 + UDP frame of size bytes (checksummed IP header, no UDP checksum).
func udpFrame(srcMAC, dstMAC net.HardwareAddr, src, dst net.IP, port, size int) []byte {
	f := make([]byte, size)
	copy(f[0:6], dstMAC)
	copy(f[6:12], srcMAC)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_IP)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(size-14))
	ip[6] = 0x40 // don't fragment
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	copy(ip[12:16], src)
	copy(ip[16:20], dst)
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := f[34:42]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], uint16(port))
	binary.BigEndian.PutUint16(udp[4:], uint16(size-34))
	return f
}
