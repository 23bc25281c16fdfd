// The GUI of kmesh global: draws the page its path names from global's own JSON API, again every
// 5 s. Every read carries the token of the sign-in form (kept in this tab's sessionStorage only)
// as `Authorization: Bearer`, so the API decides what may be read; a 401 shows the sign-in form,
// a 403 says the token may not read the page. Text from the API is only ever set as text
// (textContent), never parsed as HTML. Nothing is loaded from any other host.
'use strict';

(function () {
  const TOKEN_KEY = 'kmesh-global-token';
  const REFRESH_MS = 5000;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const app = {
    token: '',
    busy: false,
    // The sign-in form or a refusal is shown: refreshing would wipe what the user types.
    held: false,
    refreshes: 0,
    lastOk: null,
    // The last page drawn and its data, to draw again on a resize.
    last: null,
  };

  // ---- the token: this tab only --------------------------------------------------------------

  function loadToken() {
    try {
      return window.sessionStorage.getItem(TOKEN_KEY) || '';
    } catch (e) {
      return '';
    }
  }

  function saveToken(token) {
    app.token = token;
    try {
      if (token) {
        window.sessionStorage.setItem(TOKEN_KEY, token);
      } else {
        window.sessionStorage.removeItem(TOKEN_KEY);
      }
    } catch (e) {
      // Storage refused (private mode): the token lives in this page only.
    }
  }

  // ---- building the DOM ----------------------------------------------------------------------

  function add(el, children) {
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      if (Array.isArray(child)) {
        add(el, child);
      } else if (child instanceof Node) {
        el.appendChild(child);
      } else {
        el.appendChild(document.createTextNode(String(child)));
      }
    }
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    return add(el, children);
  }

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    return add(el, children);
  }

  function link(href, text) {
    return h('a', { href: href }, text);
  }

  function meshHref(name) {
    return '/gui/meshes/' + encodeURIComponent(name);
  }

  function zoneHref(name) {
    return '/gui/zones/' + encodeURIComponent(name);
  }

  // A status in colour and in words: kind is ok, bad, warn or neutral.
  function pill(kind, text) {
    return h('span', { class: 'pill pill-' + kind, 'data-kind': kind }, text);
  }

  function section(title, attrs, ...children) {
    return h('section', Object.assign({ class: 'card' }, attrs || {}), h('h2', null, title), children);
  }

  // A table that becomes a list of cards on a narrow screen (each cell says its column).
  function table(columns, rows, attrs) {
    const head = h('tr', null, columns.map((c) => h('th', { scope: 'col' }, c)));
    const body = rows.map((row) =>
      h('tr', row.attrs || null, row.cells.map((cell, i) => h('td', { 'data-label': columns[i] }, h('div', { class: 'cell' }, cell))))
    );
    return h('div', { class: 'table-wrap' }, h('table', Object.assign({ class: 'grid' }, attrs || {}), h('thead', null, head), h('tbody', null, body)));
  }

  function plural(n, word) {
    return n + ' ' + word + (n === 1 ? '' : 's');
  }

  function empty(text) {
    return h('p', { class: 'muted empty' }, text);
  }

  // ---- time ----------------------------------------------------------------------------------

  function parseTime(iso) {
    if (!iso) return null;
    const t = Date.parse(iso);
    return Number.isNaN(t) ? null : t;
  }

  function pad(n) {
    return String(n).padStart(2, '0');
  }

  function absolute(ms) {
    const d = new Date(ms);
    return d.getUTCFullYear() + '-' + pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate()) + ' ' +
      pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes()) + ':' + pad(d.getUTCSeconds()) + ' UTC';
  }

  function span(ms) {
    const sec = Math.round(Math.abs(ms) / 1000);
    if (sec < 60) return sec + ' s';
    const min = Math.round(sec / 60);
    if (min < 60) return min + ' min';
    const hours = Math.floor(min / 60);
    if (hours < 48) return hours + ' h' + (min % 60 ? ' ' + (min % 60) + ' min' : '');
    const days = Math.floor(hours / 24);
    return days + ' d' + (hours % 24 ? ' ' + (hours % 24) + ' h' : '');
  }

  function relative(ms, now) {
    const d = ms - now;
    if (Math.abs(d) < 1500) return 'now';
    return d > 0 ? 'in ' + span(d) : span(d) + ' ago';
  }

  // A time as "in 3 h" with its UTC date below; "never" when absent.
  function when(iso, now, never, prefix) {
    const t = parseTime(iso);
    if (t === null) return h('span', { class: 'muted' }, never || 'never');
    return h('span', { class: 'when' }, h('span', { class: 'rel' }, (prefix || '') + relative(t, now)), h('span', { class: 'abs' }, absolute(t)));
  }

  // A time within a sentence: "2026-01-02 03:04:05 UTC (3 min ago)".
  function inline(iso, now) {
    const t = parseTime(iso);
    return t === null ? 'never' : absolute(t) + ' (' + relative(t, now) + ')';
  }

  // ---- reading the API -----------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, detail, path) {
      super(detail);
      this.status = status;
      this.detail = detail;
      this.path = path;
    }
  }

  // A read of the API; a list is read to its end, page after page (`next`), always on this
  // page's own origin (only the path and query of a link are followed).
  async function api(path) {
    const body = await apiPage(path);
    let next = body && Array.isArray(body.items) ? body.next : null;
    for (let pages = 1; typeof next === 'string' && next && pages < 10000; pages++) {
      const url = new URL(next, window.location.origin);
      const more = await apiPage(url.pathname + url.search);
      body.items = body.items.concat(more.items || []);
      body.total = more.total;
      next = more.next;
    }
    if (body && Array.isArray(body.items)) body.next = null;
    return body;
  }

  async function apiPage(path) {
    const headers = { Accept: 'application/json' };
    if (app.token) headers.Authorization = 'Bearer ' + app.token;
    let resp;
    try {
      resp = await fetch(path, { headers: headers, cache: 'no-store', credentials: 'omit', redirect: 'error' });
    } catch (e) {
      throw new ApiError(0, 'global did not answer (' + e.message + ')', path);
    }
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      body = null;
    }
    if (!resp.ok) {
      const detail = (body && (body.detail || body.title)) || resp.statusText || 'error';
      throw new ApiError(resp.status, detail, path);
    }
    return body;
  }

  // The backend checks of the last admission that stored the mesh: result, failed steps and
  // warnings per backend.
  function validationView(v, now) {
    if (!v || !(v.checks || []).length) return empty('No validation on record for this mesh (stored without a backend check).');
    const rows = v.checks.map((c) => {
      const failed = (c.checks || []).filter((s) => !s.passed);
      const warnings = c.warnings || [];
      return {
        attrs: { 'data-backend': c.backend },
        cells: [
          h('strong', null, c.backend),
          c.type,
          c.ok ? pill('ok', 'Passed') : pill('bad', 'Failed'),
          failed.length || warnings.length
            ? h('ul', { class: 'warnings' },
              failed.map((s) => h('li', null, pill('bad', s.name), ' ', s.detail)),
              warnings.map((w) => h('li', { class: 'warning' }, pill('warn', 'warning'), ' ', w)))
            : 'every step passed, no warning',
        ],
      };
    });
    return h('div', null,
      h('p', { class: 'muted' }, 'Checked ', inline(v.at, now)),
      table(['Backend', 'Type', 'Result', 'Failed steps and warnings'], rows, { class: 'grid validation' }));
  }

  async function dataplanesOf(meshes) {
    const lists = await Promise.all(meshes.map((m) => api('/meshes/' + encodeURIComponent(m.name) + '/dataplanes')));
    return lists.flatMap((l) => l.items || []);
  }

  // ---- what the pages share ------------------------------------------------------------------

  // Each zone's own checks of its CA backends, as it last reported them.
  function checksOf(zone) {
    return (zone.vault || []).map((c) => Object.assign({ zone: zone.name, zoneOnline: zone.online }, c));
  }

  function checkResult(c) {
    return c.ok ? pill('ok', 'OK') : pill('bad', 'Failing');
  }

  function zoneStatus(z) {
    return z.online ? pill('ok', 'Online') : pill('bad', 'Offline');
  }

  function enabledBackend(mesh) {
    const mtls = mesh.mtls || {};
    const name = mtls.enabledBackend;
    const backend = (mtls.backends || []).find((b) => b.name === name);
    return { name: name || '', type: backend ? backend.type : '' };
  }

  function dpStatus(d) {
    const parts = [];
    if (!d.zoneOnline) {
      parts.push(pill('neutral', 'Zone offline'));
    } else if (d.connected) {
      parts.push(pill('ok', 'Connected'));
    } else {
      parts.push(pill('warn', 'Disconnected'));
    }
    if (d.state && d.state !== 'ok') parts.push(pill('warn', d.state));
    if (!d.certificate) parts.push(pill('bad', 'No certificate'));
    const notes = [];
    if (d.lastError) notes.push(h('div', { class: 'reason' }, d.lastError));
    if (d.conflict) notes.push(h('div', { class: 'note' }, d.conflict));
    if (d.warning) notes.push(h('div', { class: 'note' }, d.warning));
    return [h('div', { class: 'pills' }, parts), notes];
  }

  function expiryCell(d, now) {
    if (!d.certificate) return h('span', { class: 'muted' }, '—');
    const t = parseTime(d.certificate.expiration);
    const cell = when(d.certificate.expiration, now, 'unknown');
    if (t !== null && t <= now) return [pill('bad', 'Expired'), cell];
    return cell;
  }

  function rotationCell(d, now) {
    if (!d.certificate) return h('span', { class: 'muted' }, '—');
    if (!d.certificate.rotation) return h('span', { class: 'muted' }, 'not reported');
    const t = parseTime(d.certificate.rotation);
    const cell = when(d.certificate.rotation, now);
    if (t !== null && t <= now && d.connected) return [pill('warn', 'Due'), cell];
    return cell;
  }

  function serialCell(d) {
    return d.certificate ? h('code', { class: 'serial' }, d.certificate.serial) : h('span', { class: 'muted' }, '—');
  }

  function dataplaneTable(dps, now, withZone, withMesh) {
    const columns = ['Dataplane'];
    if (withMesh) columns.push('Mesh');
    if (withZone) columns.push('Zone');
    columns.push('Service', 'Status', 'Certificate serial', 'Backend', 'Expires', 'Next rotation');
    const rows = dps.map((d) => {
      const tags = ((d.networking || {}).inbound || [{}])[0].tags || {};
      const cells = [h('strong', null, d.name)];
      if (withMesh) cells.push(link(meshHref(d.mesh), d.mesh));
      if (withZone) cells.push(link(zoneHref(d.zone), d.zone));
      cells.push(
        tags['kuma.io/service'] || '—',
        dpStatus(d),
        serialCell(d),
        d.certificate ? d.certificate.backend : '—',
        expiryCell(d, now),
        rotationCell(d, now)
      );
      return { attrs: { 'data-dp': d.name, 'data-zone': d.zone, 'data-mesh': d.mesh }, cells: cells };
    });
    if (!rows.length) return empty('No dataplanes reported.');
    return table(columns, rows, { class: 'grid dataplanes' });
  }

  function checksTable(checks, now, withZone, withMesh) {
    if (!checks.length) return empty('No checks reported yet.');
    const columns = [];
    if (withZone) columns.push('Zone');
    if (withMesh) columns.push('Mesh');
    columns.push('Backend', 'Result', 'Reason', 'Checked', 'Issued', 'Last issued');
    const rows = checks.map((c) => {
      const cells = [];
      if (withZone) cells.push([link(zoneHref(c.zone), c.zone), c.zoneOnline ? null : h('div', { class: 'note' }, 'zone offline: as last reported')]);
      if (withMesh) cells.push(link(meshHref(c.mesh), c.mesh));
      cells.push(
        [h('strong', null, c.backend), ' ', h('span', { class: 'muted' }, c.type || '')],
        checkResult(c),
        c.ok ? h('span', { class: 'muted' }, '—') : h('span', { class: 'reason' }, c.error || 'no reason given'),
        when(c.checkedAt, now),
        String(c.issued || 0),
        when(c.lastIssuedAt, now)
      );
      return { attrs: { class: 'check', 'data-zone': c.zone, 'data-mesh': c.mesh, 'data-backend': c.backend, 'data-ok': String(!!c.ok) }, cells: cells };
    });
    return table(columns, rows, { class: 'grid checks' });
  }

  function failingList(checks, now) {
    const failing = checks.filter((c) => !c.ok);
    if (!failing.length) return null;
    return h('section', { class: 'card alert', id: 'failing' },
      h('h2', null, failing.length === 1 ? 'A CA backend check is failing' : failing.length + ' CA backend checks are failing'),
      h('ul', { class: 'failing' }, failing.map((c) =>
        h('li', { class: 'failing-check', 'data-zone': c.zone, 'data-mesh': c.mesh, 'data-backend': c.backend },
          pill('bad', 'Failing'), ' ',
          'Zone ', link(zoneHref(c.zone), c.zone), ' cannot use backend ', h('strong', null, c.backend),
          ' of mesh ', link(meshHref(c.mesh), c.mesh), ': ',
          h('span', { class: 'reason' }, c.error || 'no reason given'),
          h('span', { class: 'muted' }, ' (checked ' + (parseTime(c.checkedAt) ? relative(parseTime(c.checkedAt), now) : 'never') + ')')
        )
      ))
    );
  }

  function stat(label, value, detail, kind, id) {
    return h('div', { class: 'stat stat-' + (kind || 'neutral'), id: id },
      h('div', { class: 'stat-label' }, label),
      h('div', { class: 'stat-value' }, value),
      h('div', { class: 'stat-detail' }, detail || ''));
  }

  // ---- the certificate timeline (SVG) --------------------------------------------------------

  const STEPS = [60e3, 5 * 60e3, 15 * 60e3, 30 * 60e3, 3600e3, 3 * 3600e3, 6 * 3600e3, 12 * 3600e3,
    86400e3, 2 * 86400e3, 7 * 86400e3, 14 * 86400e3, 30 * 86400e3, 90 * 86400e3, 365 * 86400e3];

  function tickLabel(ms, step) {
    const d = new Date(ms);
    if (step < 86400e3) return pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes());
    return d.getUTCFullYear() + '-' + pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate());
  }

  // One row per dataplane holding a certificate: its remaining life as a bar from now to its
  // expiry (a diamond), and its next rotation (a circle).
  function timeline(dps, now, width) {
    const rows = dps
      .filter((d) => d.certificate && parseTime(d.certificate.expiration) !== null)
      .map((d) => ({ d: d, exp: parseTime(d.certificate.expiration), rot: parseTime(d.certificate.rotation) }))
      .sort((a, b) => a.exp - b.exp || a.d.name.localeCompare(b.d.name));
    if (!rows.length) return empty('No dataplane holds a certificate yet.');
    const W = Math.max(300, Math.round(width));
    const padX = 14;
    const top = 30;
    const rowH = 38;
    const H = top + rows.length * rowH + 8;
    let start = now;
    let end = now;
    for (const r of rows) {
      start = Math.min(start, r.exp, r.rot === null ? r.exp : r.rot);
      end = Math.max(end, r.exp, r.rot === null ? r.exp : r.rot);
    }
    if (end - start < 60e3) end = start + 60e3;
    const margin = (end - start) * 0.04;
    start -= margin;
    end += margin;
    const x = (t) => padX + ((t - start) / (end - start)) * (W - 2 * padX);
    const maxTicks = Math.max(2, Math.floor(W / 110));
    const step = STEPS.find((st) => (end - start) / st <= maxTicks) || STEPS[STEPS.length - 1];
    const grid = [];
    for (let t = Math.ceil(start / step) * step; t <= end; t += step) {
      grid.push(s('line', { class: 'tl-grid', x1: x(t), x2: x(t), y1: top - 8, y2: H - 4 }));
      grid.push(s('text', { class: 'tl-tick', x: x(t), y: 14, 'text-anchor': 'middle' }, tickLabel(t, step)));
    }
    const body = rows.map((r, i) => {
      const y = top + i * rowH;
      const barY = y + 24;
      const expired = r.exp <= now;
      const from = Math.min(now, r.exp);
      const title = r.d.name + ' (' + r.d.zone + '): certificate ' + r.d.certificate.serial +
        (expired ? ' expired ' : ' expires ') + absolute(r.exp) +
        (r.rot === null ? '' : '; next rotation ' + absolute(r.rot));
      const parts = [
        s('title', null, title),
        s('text', { class: 'tl-label', x: padX, y: y + 11 }, r.d.name + ' · ' + r.d.zone),
        s('line', { class: expired ? 'tl-life tl-life-expired' : 'tl-life', x1: x(from), x2: x(Math.max(now, r.exp)), y1: barY, y2: barY }),
      ];
      if (r.rot !== null) {
        parts.push(s('circle', { class: r.rot <= now ? 'tl-rotation tl-due' : 'tl-rotation', cx: x(r.rot), cy: barY, r: 5.5 }));
      }
      const ex = x(r.exp);
      parts.push(s('path', { class: expired ? 'tl-expiry tl-expired' : 'tl-expiry', d: 'M' + ex + ' ' + (barY - 7) + ' L' + (ex + 7) + ' ' + barY + ' L' + ex + ' ' + (barY + 7) + ' L' + (ex - 7) + ' ' + barY + ' Z' }));
      return s('g', { class: 'tl-row', 'data-dp': r.d.name, 'data-zone': r.d.zone }, parts);
    });
    const nowX = x(now);
    const svgEl = s('svg', {
      class: 'timeline',
      viewBox: '0 0 ' + W + ' ' + H,
      width: W,
      height: H,
      role: 'img',
      'aria-label': 'Certificate expiries and next rotations of ' + rows.length + ' dataplanes',
    },
    grid,
    s('line', { class: 'tl-now', x1: nowX, x2: nowX, y1: top - 8, y2: H - 4 }),
    s('text', { class: 'tl-now-label', x: nowX + 4, y: top - 2 }, 'now'),
    body);
    const legend = h('div', { class: 'legend' },
      h('span', null, h('i', { class: 'key key-life' }), 'remaining life'),
      h('span', null, h('i', { class: 'key key-rotation' }), 'next rotation'),
      h('span', null, h('i', { class: 'key key-expiry' }), 'expiry'),
      h('span', null, h('i', { class: 'key key-now' }), 'now'),
      h('span', { class: 'muted' }, 'times in UTC'));
    return h('div', { class: 'timeline-wrap' }, svgEl, legend);
  }

  // ---- pages ---------------------------------------------------------------------------------

  function route() {
    const p = window.location.pathname;
    if (p === '/gui/' || p === '/gui') return { page: 'overview' };
    if (p === '/gui/replicas') return { page: 'replicas' };
    let m = /^\/gui\/meshes\/([^/]+)$/.exec(p);
    if (m) return { page: 'mesh', name: decodeURIComponent(m[1]) };
    m = /^\/gui\/zones\/([^/]+)$/.exec(p);
    if (m) return { page: 'zone', name: decodeURIComponent(m[1]) };
    return { page: 'missing' };
  }

  const pages = {
    overview: {
      title: () => 'Overview',
      async load() {
        const [zones, meshes] = await Promise.all([api('/zones'), api('/meshes')]);
        const dataplanes = await dataplanesOf(meshes.items || []);
        return { zones: zones.items || [], meshes: meshes.items || [], dataplanes: dataplanes };
      },
      draw(data, now) {
        const { zones, meshes, dataplanes } = data;
        const checks = zones.flatMap(checksOf);
        const failing = checks.filter((c) => !c.ok).length;
        const online = zones.filter((z) => z.online).length;
        const connected = dataplanes.filter((d) => d.connected && d.zoneOnline).length;
        const certified = dataplanes.filter((d) => d.certificate).length;
        const stats = h('div', { class: 'stats' },
          stat('Zones online', online + ' of ' + zones.length, zones.length - online ? (zones.length - online) + ' offline' : 'all online', zones.length - online ? 'bad' : 'ok', 'stat-zones'),
          stat('Meshes', String(meshes.length), meshes.map((m) => m.name).join(', '), 'neutral', 'stat-meshes'),
          stat('Dataplanes', String(dataplanes.length), connected + ' connected · ' + certified + ' with a certificate', 'neutral', 'stat-dataplanes'),
          stat('Backend checks', failing ? failing + ' failing' : checks.length + ' OK', checks.length + ' reported by the zones', failing ? 'bad' : (checks.length ? 'ok' : 'neutral'), 'stat-checks'));
        const perZone = {};
        for (const d of dataplanes) perZone[d.zone] = (perZone[d.zone] || 0) + 1;
        const zoneRows = zones.map((z) => ({
          attrs: { class: 'zone-row', 'data-zone': z.name, 'data-status': z.online ? 'online' : 'offline' },
          cells: [
            h('strong', null, link(zoneHref(z.name), z.name)),
            [zoneStatus(z), z.online ? null : h('div', { class: 'reason' }, z.lastError || z.lastDisconnectReason || '')],
            z.online ? when(z.connectedSince, now, null, 'connected ') : when(z.lastSeen, now, null, 'last seen '),
            checksOf(z).length ? h('ul', { class: 'checklist' }, checksOf(z).map((c) =>
              h('li', { class: 'check', 'data-mesh': c.mesh, 'data-backend': c.backend, 'data-ok': String(!!c.ok) },
                h('span', { class: 'check-id' }, c.mesh + ' / ' + c.backend), ' ', checkResult(c),
                c.ok ? null : h('div', { class: 'reason' }, c.error || 'no reason given')))) : h('span', { class: 'muted' }, 'none reported'),
            String(perZone[z.name] || 0),
          ],
        }));
        const meshRows = meshes.map((m) => {
          const eb = enabledBackend(m);
          const dps = dataplanes.filter((d) => d.mesh === m.name);
          const backends = ((m.mtls || {}).backends || []);
          return {
            attrs: { 'data-mesh': m.name },
            cells: [
              h('strong', null, link(meshHref(m.name), m.name)),
              eb.name ? [h('strong', null, eb.name), ' ', h('span', { class: 'muted' }, eb.type)] : pill('warn', 'mTLS off'),
              backends.map((b) => b.name).join(', ') || '—',
              dps.length + ' (' + dps.filter((d) => d.connected && d.zoneOnline).length + ' connected)',
            ],
          };
        });
        return [
          h('h1', null, 'Overview'),
          stats,
          failingList(checks, now),
          section('Zones', { id: 'zones' }, zoneRows.length ? table(['Zone', 'Status', 'Last seen', 'Backend checks', 'Dataplanes'], zoneRows, { class: 'grid zones' }) : empty('No zone has connected yet.')),
          section('Meshes', { id: 'meshes' }, meshRows.length ? table(['Mesh', 'Enabled backend', 'Backends', 'Dataplanes'], meshRows, { class: 'grid meshes' }) : empty('No meshes yet.')),
        ];
      },
    },

    mesh: {
      title: (r) => 'Mesh ' + r.name,
      async load(r) {
        const enc = encodeURIComponent(r.name);
        // The last validation at global: absent (404) for a mesh stored before it was kept.
        const validation = api('/meshes/' + enc + '/validation').catch((e) => (e.status === 404 ? null : Promise.reject(e)));
        const [mesh, dps, zones, last] = await Promise.all([api('/meshes/' + enc), api('/meshes/' + enc + '/dataplanes'), api('/zones'), validation]);
        return { mesh: mesh, dataplanes: dps.items || [], zones: zones.items || [], validation: last };
      },
      draw(data, now, r) {
        const { mesh, dataplanes, zones, validation } = data;
        const eb = enabledBackend(mesh);
        const backends = (mesh.mtls || {}).backends || [];
        const backendRows = backends.map((b) => ({
          attrs: { 'data-backend': b.name },
          cells: [
            h('strong', null, b.name),
            b.type,
            b.name === eb.name ? pill('ok', 'Enabled') : pill('neutral', 'Not enabled'),
            (((b.dpCert || {}).rotation || {}).expiration) || 'default',
            backendDetails(b),
          ],
        }));
        const checks = zones.flatMap(checksOf).filter((c) => c.mesh === r.name);
        const warnings = meshWarnings(r.name, zones, dataplanes);
        const width = Math.max(300, (document.getElementById('main').clientWidth || 960) - 44);
        return [
          h('p', { class: 'crumbs' }, link('/gui/', 'Overview'), ' / mesh'),
          h('h1', null, 'Mesh ', h('span', { class: 'name' }, mesh.name), ' ', eb.name ? pill('ok', 'mTLS: ' + eb.name) : pill('warn', 'mTLS off')),
          h('p', { class: 'muted' }, 'Created ', inline(mesh.creationTime, now), ' · modified ', inline(mesh.modificationTime, now)),
          failingList(checks, now),
          section('Backends', { id: 'backends' }, backendRows.length ? table(['Backend', 'Type', 'Enabled', 'Certificate lifetime', 'Details'], backendRows, { class: 'grid backends' }) : empty('This mesh has no CA backend.')),
          section('Certificates: expiry and next rotation', { id: 'timeline' }, timeline(dataplanes, now, width)),
          section('Dataplanes', { id: 'dataplanes' }, dataplaneTable(dataplanes, now, true, false)),
          section('Warnings', { id: 'warnings' }, warnings.length ? h('ul', { class: 'warnings' }, warnings.map((w) => h('li', { class: 'warning' }, pill('warn', w.what), ' ', w.text))) : empty('No zone rejected this mesh, and no proxy reports a problem.')),
          section('Last validation at global', { id: 'validation' }, validationView(validation, now)),
          section('Backend checks by zone', { id: 'checks' }, checksTable(checks, now, true, false)),
        ];
      },
    },

    zone: {
      title: (r) => 'Zone ' + r.name,
      async load(r) {
        const [zone, meshes] = await Promise.all([api('/zones/' + encodeURIComponent(r.name)), api('/meshes')]);
        const dps = (await dataplanesOf(meshes.items || [])).filter((d) => d.zone === r.name);
        return { zone: zone, dataplanes: dps };
      },
      draw(data, now) {
        const { zone: z, dataplanes } = data;
        const st = z.status || {};
        const facts = [
          ['Status', [zoneStatus(z), ' ', z.online ? when(z.connectedSince, now, null, 'connected ') : null]],
          ['Last seen', when(z.lastSeen, now)],
          ['Last connected', when(z.lastConnected, now)],
          ['Last disconnect', [when(z.lastDisconnect, now), z.lastDisconnectReason ? h('div', { class: 'reason' }, z.lastDisconnectReason) : null]],
          ['Last error', z.lastError ? h('span', { class: 'reason' }, z.lastError) : h('span', { class: 'muted' }, 'none')],
          ['Connections', plural(z.connects, 'connect') + ', ' + plural(z.disconnects, 'disconnect')],
          ['Address', z.peer || '—'],
          ['Held by replica', z.replica ? h('code', null, z.replica) : '—'],
          ['Zone token expires', when(z.tokenExpires, now)],
          ['Zone version', st.version || '—'],
        ];
        const typeNames = Object.keys(z.types || {}).sort();
        const zoneTypes = {};
        for (const t of (st.types || [])) zoneTypes[t.type] = t;
        const syncRows = typeNames.map((t) => {
          const ts = z.types[t];
          const mine = zoneTypes[t] || {};
          const nack = ts.lastNack;
          const inSync = !nack && ts.acked > 0 && ts.sent === ts.acked + ts.nacked;
          return {
            attrs: { 'data-type': t },
            cells: [
              h('strong', null, t),
              nack ? pill('bad', 'Rejected') : (inSync ? pill('ok', 'In sync') : pill('warn', 'Waiting')),
              ts.sent + ' sent · ' + ts.acked + ' acked · ' + ts.nacked + ' rejected',
              mine.count === undefined ? '—' : String(mine.count),
              when(ts.lastSent, now),
              when(ts.lastAcked, now),
              nack ? h('span', { class: 'reason' }, nack.error) : h('span', { class: 'muted' }, 'none'),
            ],
          };
        });
        const clocks = (st.clocks || []).map((c) => ({
          attrs: { 'data-peer': c.peer },
          cells: [c.peer, c.skewed ? pill('bad', 'Skewed') : pill('ok', 'OK'), (c.skewMs >= 0 ? '+' : '') + c.skewMs + ' ms', c.detail],
        }));
        const problems = [];
        for (const t of (z.tooLarge || [])) problems.push(t.type + ' ' + (t.mesh ? t.mesh + '/' : '') + t.name + ' is not sent: ' + t.size + ' bytes, over the ' + t.limit + ' byte limit');
        if (z.lastRefusal) problems.push('Last refused stream from ' + z.lastRefusal.peer + ': ' + z.lastRefusal.reason);
        if (st.storeError) problems.push('Store of the zone: ' + st.storeError);
        return [
          h('p', { class: 'crumbs' }, link('/gui/', 'Overview'), ' / zone'),
          h('h1', null, 'Zone ', h('span', { class: 'name' }, z.name), ' ', zoneStatus(z)),
          problems.length ? h('section', { class: 'card alert' }, h('h2', null, 'Problems'), h('ul', null, problems.map((p) => h('li', { class: 'reason' }, p)))) : null,
          failingList(checksOf(z), now),
          section('Connection history', { id: 'connection' }, h('dl', { class: 'facts' }, facts.map(([k, v]) => [h('dt', null, k), h('dd', null, v)]))),
          section('Sync state per type', { id: 'sync' }, syncRows.length ? table(['Type', 'State', 'Responses', 'Held by the zone', 'Last sent', 'Last acknowledged', 'Last rejection'], syncRows, { class: 'grid sync' }) : empty('Nothing sent yet.')),
          section('Backend checks', { id: 'checks' }, checksTable(checksOf(z), now, false, true)),
          clocks.length ? section('Clocks', { id: 'clocks' }, table(['Peer', 'State', 'Skew', 'Detail'], clocks, { class: 'grid clocks' })) : null,
          section('Dataplanes', { id: 'dataplanes' }, dataplaneTable(dataplanes, now, false, true)),
        ];
      },
    },

    replicas: {
      title: () => 'Replicas',
      async load() {
        return await api('/replicas');
      },
      draw(data, now) {
        const rows = (data.items || []).map((r) => ({
          attrs: { 'data-replica': r.id, 'data-alive': String(!!r.alive) },
          cells: [
            h('code', null, r.id),
            r.hostname,
            r.apiAddress,
            r.kdsAddress,
            [r.alive ? pill('ok', 'Alive') : pill('bad', 'Not alive'), r.leader ? pill('ok', 'Leader') : null],
            when(r.lastHeartbeat, now),
            when(r.startedAt, now),
            (r.zones || []).length ? r.zones.map((z, i) => [i ? ', ' : '', link(zoneHref(z), z)]) : h('span', { class: 'muted' }, 'none'),
          ],
        }));
        return [
          h('h1', null, 'Replicas'),
          h('p', { class: 'muted' }, 'Every global on this store; each serves the API, this GUI and the sync stream.'),
          section('Replicas', { id: 'replicas' }, rows.length ? table(['Replica', 'Host', 'API', 'Sync', 'State', 'Last heartbeat', 'Started', 'Zones'], rows, { class: 'grid replicas' }) : empty('No replica has written a heartbeat yet.')),
        ];
      },
    },

    missing: {
      title: () => 'No such page',
      async load() {
        return null;
      },
      draw() {
        return [h('h1', null, 'No such page'), h('p', null, 'The GUI has an ', link('/gui/', 'overview'), ', a page per mesh and per zone, and the ', link('/gui/replicas', 'replicas'), '.')];
      },
    },
  };

  // What a backend's conf says that is not secret: where it is, never a credential.
  function backendDetails(b) {
    const conf = b.conf || {};
    if (b.type === 'vault') {
      const cp = conf.fromCp || {};
      const auth = cp.auth || {};
      const method = Object.keys(auth)[0];
      const lines = [
        ['Vault', cp.address || '—'],
        ['PKI mount', cp.pki || '—'],
        ['Role', cp.role || '—'],
      ];
      if (cp.namespace) lines.push(['Namespace', cp.namespace]);
      if (cp.agentAddress) lines.push(['Agent', cp.agentAddress]);
      if (method) lines.push(['Auth', method + sourceOf(auth[method])]);
      return h('dl', { class: 'mini' }, lines.map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
    }
    if (b.type === 'provided') {
      return h('dl', { class: 'mini' }, h('dt', null, 'CA'), h('dd', null, 'certificate' + sourceOf(conf.cert) + ', key' + sourceOf(conf.key)));
    }
    if (b.type === 'builtin') return h('span', { class: 'muted' }, 'CA generated by global, kept in Secrets of the mesh');
    return h('span', { class: 'muted' }, '—');
  }

  // Where a data source comes from, never its value.
  function sourceOf(ds) {
    if (!ds || typeof ds !== 'object') return '';
    if (ds.secret) return ' from Secret ' + ds.secret;
    if (ds.file) return ' from file ' + ds.file;
    if ('inline' in ds || 'inlineString' in ds) return ' inline (not shown)';
    const keys = Object.keys(ds);
    return keys.length ? ' (' + keys.join(', ') + ')' : '';
  }

  function meshWarnings(mesh, zones, dataplanes) {
    const out = [];
    for (const z of zones) {
      for (const [type, ts] of Object.entries(z.types || {})) {
        const nack = ts.lastNack;
        if (!nack) continue;
        const all = nack.resources || [];
        const mine = all.filter((res) => res.mesh === mesh || (type === 'Mesh' && res.name === mesh));
        for (const res of mine) {
          out.push({ what: 'Rejected by ' + z.name, text: type + ' ' + res.name + ': ' + (res.reason || nack.error) });
        }
        if (!all.length) out.push({ what: 'Rejected by ' + z.name, text: type + ': ' + nack.error });
      }
      for (const t of (z.tooLarge || [])) {
        if (t.mesh === mesh || (t.type === 'Mesh' && t.name === mesh)) {
          out.push({ what: 'Not sent to ' + z.name, text: t.type + ' ' + t.name + ' is ' + t.size + ' bytes, over the ' + t.limit + ' byte limit' });
        }
      }
    }
    for (const d of dataplanes) {
      if (d.conflict) out.push({ what: d.name, text: d.conflict });
      if (d.warning) out.push({ what: d.name, text: d.warning });
    }
    return out;
  }

  // ---- sign-in, refusals, errors -------------------------------------------------------------

  function drawSession() {
    const el = document.getElementById('session');
    el.replaceChildren();
    if (app.token) {
      add(el, [h('span', { class: 'who' }, 'Signed in with a token (this tab only)'), ' ',
        h('button', { type: 'button', id: 'sign-out', class: 'link' }, 'Sign out')]);
      document.getElementById('sign-out').addEventListener('click', signOut);
    } else {
      add(el, [h('span', { class: 'who muted' }, 'Not signed in'), ' ',
        h('button', { type: 'button', id: 'sign-in-open', class: 'link' }, 'Sign in')]);
      document.getElementById('sign-in-open').addEventListener('click', () => showSignIn(null));
    }
  }

  function signOut() {
    saveToken('');
    app.held = false;
    drawSession();
    refresh();
  }

  function setState(state) {
    document.body.dataset.state = state;
  }

  function showSignIn(err) {
    app.held = true;
    setState('signin');
    const why = err
      ? (app.token
        ? 'Global did not accept the token this tab signed in with (' + err.status + '): ' + err.detail
        : 'Global needs a token to answer this read (' + err.status + '): ' + err.detail)
      : 'Sign in with a token to read with its rights.';
    if (err && app.token) saveToken('');
    drawSession();
    const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'off', spellcheck: 'false', required: true, placeholder: 'paste a token' });
    const form = h('form', { id: 'sign-in', class: 'card signin', method: 'post', action: '/gui/' },
      h('h1', null, 'Sign in'),
      h('p', { class: err ? 'notice bad' : 'notice', id: 'signin-reason' }, why),
      h('label', { for: 'token' }, 'Token'),
      input,
      h('p', { class: 'muted' }, 'The admin token (global run writes it to <data-dir>/admin-token) or a user token. It stays in this browser tab (session storage) until you sign out or close the tab, and is sent only to this global, as Authorization: Bearer.'),
      h('div', { class: 'actions' },
        h('button', { type: 'submit', id: 'sign-in-submit' }, 'Sign in'),
        err ? null : h('button', { type: 'button', class: 'link', id: 'sign-in-cancel' }, 'Cancel')));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      saveToken(token);
      app.held = false;
      drawSession();
      refresh();
    });
    document.getElementById('main').replaceChildren(form);
    const cancel = document.getElementById('sign-in-cancel');
    if (cancel) {
      cancel.addEventListener('click', () => {
        app.held = false;
        refresh();
      });
    }
    input.focus();
  }

  function showForbidden(err) {
    app.held = true;
    setState('forbidden');
    const again = h('button', { type: 'button', id: 'sign-in-other' }, 'Sign in with another token');
    again.addEventListener('click', () => showSignIn(null));
    document.getElementById('main').replaceChildren(h('section', { class: 'card signin', id: 'forbidden' },
      h('h1', null, 'You may not read this'),
      h('p', { class: 'notice bad' }, 'Global refused this read for the token this tab signed in with (' + err.status + '): ' + err.detail),
      h('div', { class: 'actions' }, again)));
  }

  function showNotFound(err, r) {
    setState('missing');
    document.getElementById('main').replaceChildren(
      h('p', { class: 'crumbs' }, link('/gui/', 'Overview')),
      h('h1', null, (r.page === 'mesh' ? 'Mesh ' : 'Zone ') + r.name + ' not found'),
      h('p', { class: 'notice bad', id: 'not-found' }, err.detail));
  }

  function banner(text) {
    const el = document.getElementById('banner');
    if (text) {
      el.textContent = text;
      el.hidden = false;
    } else {
      el.textContent = '';
      el.hidden = true;
    }
  }

  // ---- the loop ------------------------------------------------------------------------------

  function draw(r, data) {
    const page = pages[r.page];
    const now = Date.now();
    document.title = page.title(r) + ' · kmesh global';
    const main = document.getElementById('main');
    main.replaceChildren(...[].concat(page.draw(data, now, r)).filter((n) => n));
    for (const a of document.querySelectorAll('.nav a')) {
      a.classList.toggle('current', (a.id === 'nav-overview' && r.page === 'overview') || (a.id === 'nav-replicas' && r.page === 'replicas'));
    }
  }

  async function refresh() {
    if (app.busy || app.held) return;
    app.busy = true;
    const r = route();
    document.body.dataset.page = r.page;
    try {
      const data = await pages[r.page].load(r);
      if (app.held) return;
      app.last = { r: r, data: data };
      draw(r, data);
      app.refreshes += 1;
      app.lastOk = Date.now();
      banner('');
      setState(r.page === 'missing' ? 'missing' : 'ready');
      document.body.dataset.refreshes = String(app.refreshes);
      document.getElementById('refreshed').textContent = 'Updated ' + absolute(app.lastOk);
    } catch (err) {
      if (!(err instanceof ApiError)) {
        banner('The page could not be drawn: ' + err.message);
        setState('error');
        throw err;
      }
      if (err.status === 401) {
        showSignIn(err);
      } else if (err.status === 403) {
        showForbidden(err);
      } else if (err.status === 404 && (r.page === 'mesh' || r.page === 'zone')) {
        showNotFound(err, r);
      } else {
        setState(app.last ? 'stale' : 'error');
        banner((err.status ? 'Global answered ' + err.status + ' to ' + err.path + ': ' : 'Cannot reach global: ') + err.detail +
          (app.lastOk ? '. Showing what was read at ' + absolute(app.lastOk) : '') + '; trying again every 5 s.');
      }
    } finally {
      app.busy = false;
    }
  }

  function start() {
    app.token = loadToken();
    drawSession();
    refresh();
    window.setInterval(refresh, REFRESH_MS);
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) refresh();
    });
    let resizing = null;
    window.addEventListener('resize', () => {
      window.clearTimeout(resizing);
      resizing = window.setTimeout(() => {
        if (app.last && !app.held) draw(app.last.r, app.last.data);
      }, 150);
    });
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
})();
