package federation

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// deniedNetworks are the addresses outgoing federation never connects to
// unless allowed by configuration: a server name, its well-known or its
// SRV records are chosen by whoever controls the remote DNS, and would
// otherwise let them point us at our own network (the list Synapse uses
// for ip_range_blacklist, plus 0.0.0.0/8 and 240.0.0.0/4).
var deniedNetworks = mustPrefixes(
	"0.0.0.0/8",       // "this network"
	"10.0.0.0/8",      // private
	"100.64.0.0/10",   // carrier-grade NAT
	"127.0.0.0/8",     // loopback
	"169.254.0.0/16",  // link-local
	"172.16.0.0/12",   // private
	"192.0.0.0/24",    // IETF protocol assignments
	"192.0.2.0/24",    // documentation
	"192.88.99.0/24",  // 6to4 relay anycast
	"192.168.0.0/16",  // private
	"198.18.0.0/15",   // benchmarking
	"198.51.100.0/24", // documentation
	"203.0.113.0/24",  // documentation
	"224.0.0.0/4",     // multicast
	"240.0.0.0/4",     // reserved, broadcast
	"::/96",           // unspecified, loopback, IPv4-compatible
	"fe80::/10",       // link-local
	"fec0::/10",       // site-local (deprecated)
	"fc00::/7",        // unique local
	"2001:db8::/32",   // documentation
	"ff00::/8",        // multicast
)

// nat64 embeds an IPv4 address in its last 32 bits; a NAT64 gateway would
// carry a connection there to the IPv4 address, so that address is checked.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

func mustPrefixes(cidrs ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(cidrs))
	for i, c := range cidrs {
		out[i] = netip.MustParsePrefix(c)
	}
	return out
}

// ParseNetworks parses a list of CIDRs (config: allow_private_networks).
func ParseNetworks(cidrs []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("network %q: %w", c, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// addrAllowed reports whether outgoing federation may connect to addr:
// any public address, and non-public ones only inside allow.
func addrAllowed(addr netip.Addr, allow []netip.Prefix) bool {
	addr = addr.WithZone("").Unmap()
	for _, p := range allow {
		if p.Contains(addr) {
			return true
		}
	}
	if nat64.Contains(addr) {
		b := addr.As16()
		return addrAllowed(netip.AddrFrom4([4]byte(b[12:16])), allow)
	}
	for _, p := range deniedNetworks {
		if p.Contains(addr) {
			return false
		}
	}
	return true
}

// newDialer returns the dialer of every outgoing federation connection. Its
// Control hook runs after name resolution, on the very address being
// connected to, so a name that resolves to a public address when checked
// and a private one when dialled (DNS rebinding) is still refused.
func newDialer(allow []netip.Prefix) *net.Dialer {
	return &net.Dialer{
		Timeout:   10 * time.Second,
		KeepAlive: 30 * time.Second,
		ControlContext: func(_ context.Context, network, address string, _ syscall.RawConn) error {
			if network != "tcp4" && network != "tcp6" {
				return fmt.Errorf("federation: refusing %s connection to %s", network, address)
			}
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("federation: refusing connection to %s: %w", address, err)
			}
			if !addrAllowed(ap.Addr(), allow) {
				return &deniedAddrError{addr: address}
			}
			return nil
		},
	}
}

// deniedAddrError is the error of a connection the address policy refused.
type deniedAddrError struct{ addr string }

func (e *deniedAddrError) Error() string {
	return fmt.Sprintf("federation: %s is a private or reserved address (see federation.allow_private_networks)", e.addr)
}
