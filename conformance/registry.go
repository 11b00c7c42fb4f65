package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// inProcess sends registry requests straight to a handler, so images can
// be pushed into the in-memory registry before anything listens.
type inProcess struct{ h http.Handler }

func (t inProcess) RoundTrip(r *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	// Make the client's request look like one a server received.
	in := r.Clone(r.Context())
	if in.Body == nil {
		in.Body = http.NoBody
	}
	in.RequestURI = r.URL.RequestURI()
	defer in.Body.Close()
	t.h.ServeHTTP(rec, in)
	res := rec.Result()
	res.Request = r
	return res, nil
}

// fill builds every catalog image and pushes it into h under the
// repository "<host>/<repo>" (serveRegistry puts the host back in front of
// the path of each request, so each registry host has its own names).
func fill(h http.Handler, set *imageSet) error {
	for _, e := range catalog {
		idx, err := set.index(e)
		if err != nil {
			return fmt.Errorf("build %s: %w", e.ref(), err)
		}
		ref, err := name.ParseReference("store.invalid/"+e.host+"/"+e.repo+":"+e.tag, name.Insecure)
		if err != nil {
			return err
		}
		if err := remote.WriteIndex(ref, idx, remote.WithTransport(inProcess{h})); err != nil {
			return fmt.Errorf("store %s: %w", e.ref(), err)
		}
	}
	return nil
}

// readOnly serves pulls only, rewriting /v2/<name>/... to
// /v2/<host>/<name>/..., and logs each request.
type readOnly struct {
	store http.Handler
	log   *log.Logger
	count atomic.Int64
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(c int) { s.code = c; s.ResponseWriter.WriteHeader(c) }

func (ro *readOnly) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ro.count.Add(1)
	sr := &statusRecorder{ResponseWriter: w, code: 200}
	method, host, asked := r.Method, r.Host, r.URL.Path
	defer func() { ro.log.Printf("%s %s %s -> %d", method, host, asked, sr.code) }()
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(sr, "read-only registry", http.StatusMethodNotAllowed)
		return
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if rest, ok := strings.CutPrefix(r.URL.Path, "/v2/"); ok && rest != "" {
		r = r.Clone(r.Context())
		r.URL.Path = "/v2/" + host + "/" + rest
		r.URL.RawPath = ""
	}
	ro.store.ServeHTTP(sr, r)
}

// throwawayCA makes a CA and a server certificate for hosts, valid for a
// day, and writes the CA to dir/ca.pem (the only root the test processes
// trust, through SSL_CERT_FILE).
func throwawayCA(dir string, hosts []string) (tls.Certificate, string, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "runckit conformance throwaway CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "runckit conformance registry"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: hosts, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return tls.Certificate{}, "", err
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		return tls.Certificate{}, "", err
	}
	return tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}, caFile, nil
}

// serveRegistry builds the images, pushes them into an in-memory registry
// and serves it over TLS on addr (loopback). It returns the server, the CA
// file and the request counter.
func serveRegistry(addr, busybox, certDir, logFile string) (*http.Server, string, *readOnly, error) {
	set, err := newImageSet(busybox)
	if err != nil {
		return nil, "", nil, err
	}
	store := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if err := fill(store, set); err != nil {
		return nil, "", nil, err
	}
	cert, caFile, err := throwawayCA(certDir, registryHosts())
	if err != nil {
		return nil, "", nil, err
	}
	lf, err := os.Create(logFile)
	if err != nil {
		return nil, "", nil, err
	}
	ro := &readOnly{store: store, log: log.New(lf, "", log.LstdFlags|log.Lmicroseconds)}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		lf.Close()
		return nil, "", nil, fmt.Errorf("registry: %w (the images must be served on port 443 of loopback, because the references carry no port)", err)
	}
	srv := &http.Server{Handler: ro, ReadHeaderTimeout: time.Minute, ErrorLog: ro.log,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	go func() {
		_ = srv.Serve(tls.NewListener(ln, srv.TLSConfig))
		lf.Close()
	}()
	return srv, caFile, ro, nil
}

// checkRegistry asks every host for /v2/ through the system resolver
// (/etc/hosts) and the throwaway CA, as containerd will.
func checkRegistry(caFile string, hosts []string) error {
	pemData, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemData)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for _, h := range hosts {
		addrs, err := net.LookupHost(h)
		if err != nil || len(addrs) == 0 {
			return fmt.Errorf("%s does not resolve: %v", h, err)
		}
		for _, a := range addrs {
			if ip := net.ParseIP(a); ip == nil || !ip.IsLoopback() {
				return fmt.Errorf("%s resolves to %v, not only to loopback", h, addrs)
			}
		}
		res, err := c.Get("https://" + h + "/v2/")
		if err != nil {
			return fmt.Errorf("https://%s/v2/: %w", h, err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("https://%s/v2/: %s", h, res.Status)
		}
	}
	return nil
}
