package main

// Security from the environment, as tests/kafka/client.py reads it: KT_SECURITY_PROTOCOL
// (SSL, SASL_SSL, SASL_PLAINTEXT), KT_SSL_CA (a PEM CA file), KT_SASL_MECHANISM (PLAIN,
// SCRAM-SHA-512), KT_SASL_USER and KT_SASL_PASSWORD.

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// tlsConfig trusts the CA of KT_SSL_CA, or nil without TLS.
func tlsConfig() (*tls.Config, error) {
	if !strings.Contains(os.Getenv("KT_SECURITY_PROTOCOL"), "SSL") {
		return nil, nil
	}
	ca, err := os.ReadFile(os.Getenv("KT_SSL_CA"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("no certificate in %s", os.Getenv("KT_SSL_CA"))
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// franzSecurity is franz-go's options for the environment's security.
func franzSecurity() ([]kgo.Opt, error) {
	var opts []kgo.Opt
	cfg, err := tlsConfig()
	if err != nil {
		return nil, err
	}
	if cfg != nil {
		opts = append(opts, kgo.DialTLSConfig(cfg))
	}
	user, pass := os.Getenv("KT_SASL_USER"), os.Getenv("KT_SASL_PASSWORD")
	switch m := os.Getenv("KT_SASL_MECHANISM"); m {
	case "":
	case "PLAIN":
		opts = append(opts, kgo.SASL(plain.Auth{User: user, Pass: pass}.AsMechanism()))
	case "SCRAM-SHA-512":
		opts = append(opts, kgo.SASL(scram.Auth{User: user, Pass: pass}.AsSha512Mechanism()))
	default:
		return nil, fmt.Errorf("unsupported SASL mechanism %q", m)
	}
	return opts, nil
}

// saramaSecurity sets sarama's configuration for the environment's security (SASL: PLAIN).
func saramaSecurity(c *sarama.Config) error {
	cfg, err := tlsConfig()
	if err != nil {
		return err
	}
	if cfg != nil {
		c.Net.TLS.Enable = true
		c.Net.TLS.Config = cfg
	}
	switch m := os.Getenv("KT_SASL_MECHANISM"); m {
	case "":
	case "PLAIN":
		c.Net.SASL.Enable = true
		c.Net.SASL.Mechanism = sarama.SASLTypePlaintext
		c.Net.SASL.User = os.Getenv("KT_SASL_USER")
		c.Net.SASL.Password = os.Getenv("KT_SASL_PASSWORD")
	default:
		return fmt.Errorf("unsupported SASL mechanism %q for sarama", m)
	}
	return nil
}
