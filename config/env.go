package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// EnvPrefix starts every environment override. The rest of the name is the
// option's YAML path in upper case, joined with underscores:
// database.url is WEFT_DATABASE_URL. Lists are comma-separated.
const EnvPrefix = "WEFT_"

// EnvNames lists the environment variable of every option, in file order.
func EnvNames() []string {
	var names []string
	walkLeaves(reflect.ValueOf(&Config{}).Elem(), "", func(name string, _ reflect.Value) {
		names = append(names, name)
	})
	return names
}

func applyEnv(c *Config, environ []string) error {
	set := make(map[string]string)
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, EnvPrefix) {
			set[k] = v
		}
	}
	if len(set) == 0 {
		return nil
	}
	var err error
	walkLeaves(reflect.ValueOf(c).Elem(), "", func(name string, field reflect.Value) {
		v, ok := set[name]
		if !ok || err != nil {
			return
		}
		if perr := setFromString(field, v); perr != nil {
			err = fmt.Errorf("%s: %v", name, perr)
		}
	})
	return err
}

// walkLeaves calls fn for every settable scalar or list option below v with
// its environment variable name. Lists of structs are not reachable from
// the environment (old_signing_keys): they need the file.
func walkLeaves(v reflect.Value, prefix string, fn func(string, reflect.Value)) {
	t := v.Type()
	for i := range t.NumField() {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		name := prefix + strings.ToUpper(tag)
		f := v.Field(i)
		switch {
		case f.Kind() == reflect.Struct:
			walkLeaves(f, name+"_", fn)
		case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.Struct:
		default:
			fn(EnvPrefix+name, f)
		}
	}
}

func setFromString(f reflect.Value, s string) error {
	if f.Type() == reflect.TypeFor[time.Duration]() {
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration like 10s or 5m", s)
		}
		f.SetInt(int64(d))
		return nil
	}
	switch f.Kind() {
	case reflect.String:
		f.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not true or false", s)
		}
		f.SetBool(b)
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", s)
		}
		f.SetInt(n)
	case reflect.Float64:
		n, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("%q is not a number", s)
		}
		f.SetFloat(n)
	case reflect.Slice:
		var items []string
		for item := range strings.SplitSeq(s, ",") {
			if item = strings.TrimSpace(item); item != "" {
				items = append(items, item)
			}
		}
		f.Set(reflect.ValueOf(items))
	default:
		return fmt.Errorf("cannot be set from the environment")
	}
	return nil
}
