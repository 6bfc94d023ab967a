package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

const adminUsage = `Usage: weft admin COMMAND [flags]

Commands act on the database named by the config directly; the server may
be running or not.

  create-user                  create an account (no registration needed)
  registration-token create    make a token for m.login.registration_token
  registration-token list      list the registration tokens
  registration-token delete    delete a registration token

Run 'weft admin COMMAND --help' for a command's flags.`

// admin holds the operator commands that act on the database directly.
func admin(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" || args[0] == "-help" || args[0] == "help" {
		fmt.Fprintln(stderr, adminUsage)
		if len(args) == 0 {
			return errors.New("admin: expected a command")
		}
		return nil
	}
	switch args[0] {
	case "create-user":
		return adminCreateUser(ctx, args[1:], environ, stdout, stderr)
	case "registration-token":
		return adminRegistrationToken(ctx, args[1:], environ, stdout, stderr)
	}
	fmt.Fprintln(stderr, adminUsage)
	return fmt.Errorf("admin: unknown command %q", args[0])
}

// adminStore is the database and account service a command works on.
type adminStore struct {
	db    *sql.DB
	users *userapi.Service
}

// openAdminStore loads the config and opens its database (migrating it if
// needed, as the server would). No bus: nothing here revokes tokens.
func openAdminStore(ctx context.Context, cfgPath string, environ []string, stderr io.Writer) (*adminStore, error) {
	cfg, err := loadConfig(cfgPath, environ)
	if err != nil {
		return nil, err
	}
	db, err := sql.Open(ctx, cfg.Database.URL, cfg.Database.MaxOpenConns)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	users, err := userapi.New(db, cfg.ServerName, cfg.Auth, nil, log)
	if err != nil {
		db.Close()
		return nil, err
	}
	return &adminStore{db: db, users: users}, nil
}

func (s *adminStore) Close() {
	s.users.Close()
	s.db.Close()
}

// cliError turns a Matrix error into a message for a terminal: the text
// and the errcode, without the HTTP status.
func cliError(op string, err error) error {
	var me *mxhttp.Error
	if errors.As(err, &me) && me.Status < 500 {
		return fmt.Errorf("%s: %s (%s)", op, me.Message, me.Code)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// parseInterleaved parses flags that may come before and after positional
// arguments ("delete TOKEN --config F"), which package flag alone stops at.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func adminCreateUser(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := newFlags("admin create-user",
		"admin create-user [--config FILE] --user NAME (--password P | --password-file F) [--admin]", stderr)
	cfgPath := fs.String("config", "", "YAML config file (default: none, the zero-config local setup)")
	user := fs.String("user", "", "the new user's name: a localpart or a full user id of this server")
	password := fs.String("password", "", "the password (visible in the process list; prefer --password-file)")
	passwordFile := fs.String("password-file", "", "read the password from this file (a trailing newline is dropped)")
	isAdmin := fs.Bool("admin", false, "make the user a server admin")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("create-user: unexpected argument %q", pos[0])
	}
	if *user == "" {
		return errors.New("create-user: --user is required")
	}
	if (*password == "") == (*passwordFile == "") {
		return errors.New("create-user: give exactly one of --password and --password-file")
	}
	pw := *password
	if *passwordFile != "" {
		b, err := os.ReadFile(*passwordFile)
		if err != nil {
			return fmt.Errorf("create-user: %w", err)
		}
		pw = strings.TrimRight(string(b), "\r\n")
		if pw == "" {
			return fmt.Errorf("create-user: %s holds no password", *passwordFile)
		}
	}
	store, err := openAdminStore(ctx, *cfgPath, environ, stderr)
	if err != nil {
		return err
	}
	defer store.Close()
	localpart := *user
	if strings.HasPrefix(localpart, "@") {
		if localpart, err = store.users.LocalpartOf(localpart); err != nil {
			return fmt.Errorf("create-user: %s is not a user id of %s", *user, store.users.ServerName())
		}
	}
	// Lower-cased like shared-secret registration, which Synapse's
	// register_new_matrix_user goes through.
	localpart, err = store.users.Register(ctx, userapi.NewAccount{
		Localpart: userapi.NormalizeUsername(localpart),
		Password:  pw,
		Admin:     *isAdmin,
	})
	if err != nil {
		return cliError("create-user", err)
	}
	role := ""
	if *isAdmin {
		role = " (server admin)"
	}
	fmt.Fprintf(stdout, "created user %s%s\n", store.users.UserID(localpart), role)
	return nil
}

const registrationTokenUsage = `Usage: weft admin registration-token COMMAND [flags]

  create [--config FILE] [--uses N] [--expires DURATION] [--token T]
  list   [--config FILE]
  delete [--config FILE] TOKEN

Run 'weft admin registration-token COMMAND --help' for a command's flags.`

func adminRegistrationToken(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" || args[0] == "-help" || args[0] == "help" {
		fmt.Fprintln(stderr, registrationTokenUsage)
		if len(args) == 0 {
			return errors.New("registration-token: expected create, list or delete")
		}
		return nil
	}
	switch args[0] {
	case "create":
		return tokenCreate(ctx, args[1:], environ, stdout, stderr)
	case "list":
		return tokenList(ctx, args[1:], environ, stdout, stderr)
	case "delete":
		return tokenDelete(ctx, args[1:], environ, stdout, stderr)
	}
	fmt.Fprintln(stderr, registrationTokenUsage)
	return fmt.Errorf("registration-token: unknown command %q", args[0])
}

func tokenCreate(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := newFlags("admin registration-token create",
		"admin registration-token create [--config FILE] [--uses N] [--expires DURATION] [--token T]", stderr)
	cfgPath := fs.String("config", "", "YAML config file (default: none, the zero-config local setup)")
	uses := fs.Int64("uses", 0, "how many registrations may use the token (default: unlimited)")
	expires := fs.Duration("expires", 0, "how long the token stays valid, e.g. 72h (default: forever)")
	token := fs.String("token", "", "the token itself, of A-Z a-z 0-9 . _ ~ - (default: 16 random characters)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("registration-token create: unexpected argument %q", pos[0])
	}
	var spec userapi.TokenSpec
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["uses"] {
		spec.UsesAllowed = uses
	}
	if set["expires"] {
		if *expires <= 0 {
			return errors.New("registration-token create: --expires must be positive")
		}
		spec.ExpiryTS = time.Now().Add(*expires).UnixMilli()
	}
	if set["token"] {
		if err := userapi.CheckRegistrationTokenString(*token); err != nil {
			return cliError("registration-token create", err)
		}
		spec.Token = *token
	}
	store, err := openAdminStore(ctx, *cfgPath, environ, stderr)
	if err != nil {
		return err
	}
	defer store.Close()
	rt, err := store.users.CreateRegistrationToken(ctx, spec)
	if err != nil {
		return cliError("registration-token create", err)
	}
	fmt.Fprintf(stdout, "created registration token %s (uses allowed: %s, expires: %s)\n", rt.Token, usesText(rt), expiryText(rt))
	return nil
}

func tokenList(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := newFlags("admin registration-token list", "admin registration-token list [--config FILE]", stderr)
	cfgPath := fs.String("config", "", "YAML config file (default: none, the zero-config local setup)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("registration-token list: unexpected argument %q", pos[0])
	}
	store, err := openAdminStore(ctx, *cfgPath, environ, stderr)
	if err != nil {
		return err
	}
	defer store.Close()
	tokens, err := store.users.RegistrationTokens(ctx, nil)
	if err != nil {
		return cliError("registration-token list", err)
	}
	if len(tokens) == 0 {
		fmt.Fprintln(stdout, "no registration tokens")
		return nil
	}
	now := time.Now().UnixMilli()
	for _, rt := range tokens {
		state := "valid"
		if !rt.Usable(now) {
			state = "invalid"
		}
		fmt.Fprintf(stdout, "%s\t%s\tused %d of %s\texpires %s\n", rt.Token, state, rt.Completed, usesText(rt), expiryText(rt))
	}
	return nil
}

func tokenDelete(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := newFlags("admin registration-token delete", "admin registration-token delete [--config FILE] TOKEN", stderr)
	cfgPath := fs.String("config", "", "YAML config file (default: none, the zero-config local setup)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errors.New("registration-token delete: expected one TOKEN")
	}
	store, err := openAdminStore(ctx, *cfgPath, environ, stderr)
	if err != nil {
		return err
	}
	defer store.Close()
	if err := store.users.DeleteRegistrationToken(ctx, pos[0]); err != nil {
		return cliError("registration-token delete", err)
	}
	fmt.Fprintf(stdout, "deleted registration token %s\n", pos[0])
	return nil
}

func usesText(rt sql.RegistrationToken) string {
	if rt.UsesAllowed == nil {
		return "unlimited"
	}
	return fmt.Sprint(*rt.UsesAllowed)
}

func expiryText(rt sql.RegistrationToken) string {
	if rt.ExpiryTS == 0 {
		return "never"
	}
	return time.UnixMilli(rt.ExpiryTS).UTC().Format(time.RFC3339)
}
