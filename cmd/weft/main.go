// Command weft is the Weft Matrix homeserver.
//
//	weft [serve] [--config FILE]   run the server (the default)
//	weft generate-keys             write a new signing key
//	weft config example            print the documented example config
//	weft version                   print the version
//	weft admin ...                 administration commands
//	weft bench SCENARIO ...        load-test a homeserver
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/homeserver"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "weft:", err)
		os.Exit(1)
	}
}

// command is one subcommand.
type command struct {
	name, usage string
	run         func(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "run the homeserver (the default command)", serve},
		{"generate-keys", "write a new ed25519 signing key", generateKeys},
		{"config", "config example: print the documented example configuration", configCmd},
		{"version", "print the version", printVersion},
		{"admin", "administration commands (see weft admin --help)", admin},
		{"bench", "load-test a homeserver's client API (see weft bench --help)", benchCmd},
	}
}

func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || len(args[0]) > 0 && args[0][0] == '-' {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			usage(stderr)
			return flag.ErrHelp
		}
		return serve(ctx, args, environ, stdout, stderr)
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], environ, stdout, stderr)
		}
	}
	if args[0] == "help" {
		usage(stdout)
		return nil
	}
	usage(stderr)
	return fmt.Errorf("unknown command %q", args[0])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "weft: a Matrix homeserver\n\nUsage: weft [command] [flags]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-14s %s\n", c.name, c.usage)
	}
	fmt.Fprintln(w, "\nRun 'weft COMMAND --help' for a command's flags.")
}

// newFlags makes a flag set that prints its usage to stderr and returns
// errors instead of exiting.
func newFlags(name, summary string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("weft "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: weft %s\n\n", summary)
		fs.PrintDefaults()
	}
	return fs
}

// loadConfig loads the file at path over the defaults, or, with no file,
// the zero-config local setup; the environment overrides either.
func loadConfig(path string, environ []string) (config.Config, error) {
	base := config.Local()
	if path != "" {
		base = config.Defaults()
	}
	return config.Load(base, path, environ)
}

func serve(ctx context.Context, args, environ []string, _, stderr io.Writer) error {
	fs := newFlags("serve", "serve [--config FILE]", stderr)
	cfgPath := fs.String("config", "", "YAML config file (default: none, zero-config local server)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("serve: unexpected argument %q", fs.Arg(0))
	}
	cfg, err := loadConfig(*cfgPath, environ)
	if err != nil {
		return err
	}
	log := homeserver.NewLogger(cfg.Logging, stderr)
	srv, err := homeserver.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		srv.Shutdown(context.Background())
		return err
	}
	<-ctx.Done()
	log.Info("shutting down")
	return srv.Shutdown(context.Background())
}

func generateKeys(_ context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := newFlags("generate-keys", "generate-keys [--config FILE] [--output PATH]", stderr)
	cfgPath := fs.String("config", "", "YAML config file; the key goes to its signing_key_path")
	out := fs.String("output", "", "write the key here instead of signing_key_path")
	if err := fs.Parse(args); err != nil {
		return err
	}
	path := *out
	if path == "" {
		cfg, err := loadConfig(*cfgPath, environ)
		if err != nil {
			return err
		}
		path = cfg.SigningKeyPath
	}
	k, err := serverkey.Generate()
	if err != nil {
		return err
	}
	if err := serverkey.WriteNew(path, k); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote signing key %s to %s\n", k.ID, path)
	return nil
}

func configCmd(_ context.Context, args, _ []string, stdout, stderr io.Writer) error {
	fs := newFlags("config", "config example", stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 || fs.Arg(0) != "example" {
		fs.Usage()
		return errors.New("config: expected the subcommand 'example'")
	}
	_, err := stdout.Write(config.Example())
	return err
}

func printVersion(_ context.Context, args, _ []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", "version", stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	fmt.Fprintln(stdout, version.Name, version.String())
	return nil
}
