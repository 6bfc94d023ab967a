package federation

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
)

func TestAddrAllowed(t *testing.T) {
	allow, err := ParseNetworks([]string{"10.1.0.0/16", "fd00:1::/32"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		addr string
		want bool
	}{
		{"8.8.8.8", true},
		{"1.1.1.1", true},
		{"2606:4700:4700::1111", true},
		{"172.15.255.255", true}, // just below 172.16/12
		{"172.32.0.0", true},     // just above
		{"127.0.0.1", false},
		{"127.255.255.254", false},
		{"10.0.0.1", false},
		{"10.1.2.3", true}, // allowed by config
		{"172.16.0.1", false},
		{"192.168.1.1", false},
		{"169.254.169.254", false}, // cloud metadata
		{"100.64.0.1", false},
		{"0.0.0.0", false},
		{"224.0.0.1", false},
		{"255.255.255.255", false},
		{"198.18.0.1", false},
		{"::1", false},
		{"::", false},
		{"::ffff:127.0.0.1", false}, // IPv4-mapped loopback
		{"::ffff:8.8.8.8", true},
		{"::ffff:10.1.0.9", true},  // mapped, allowed by config
		{"64:ff9b::a00:1", false},  // NAT64 of 10.0.0.1
		{"64:ff9b::808:808", true}, // NAT64 of 8.8.8.8
		{"fe80::1", false},
		{"fe80::1%eth0", false},
		{"fc00::1", false},
		{"fd00:1::5", true}, // allowed by config
		{"fd00:2::5", false},
		{"ff02::1", false},
		{"2001:db8::1", false},
	} {
		if got := addrAllowed(netip.MustParseAddr(c.addr), allow); got != c.want {
			t.Errorf("addrAllowed(%s) = %v, want %v", c.addr, got, c.want)
		}
	}
	if _, err := ParseNetworks([]string{"10.0.0.0"}); err == nil {
		t.Error("ParseNetworks accepted an address without a prefix length")
	}
}

// TestDialerRefusesLoopback dials a real listener: the policy runs on the
// address being connected to, after name resolution ("localhost" too).
func TestDialerRefusesLoopback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ctx := context.Background()

	for _, addr := range []string{ln.Addr().String(), net.JoinHostPort("localhost", port)} {
		_, err := newDialer(nil).DialContext(ctx, "tcp", addr)
		var denied *deniedAddrError
		if !errors.As(err, &denied) {
			t.Errorf("dial %s without allowance: err = %v, want the address policy's refusal", addr, err)
		}
	}
	allow, _ := ParseNetworks([]string{"127.0.0.0/8"})
	c, err := newDialer(allow).DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial with 127.0.0.0/8 allowed: %v", err)
	}
	c.Close()
}
