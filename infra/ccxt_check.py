#!/usr/bin/env python3
"""Drive ccxt's own `ccxt.bitget` (sync) client against a Bitget double.

Environment:
  BITGET_URL         base URL of the double, e.g. http://127.0.0.1:8080 (no trailing /api)
  BITGET_KEY         API key
  BITGET_SECRET      API secret
  BITGET_PASSPHRASE  API passphrase
  BITGET_SYMBOL      optional, unified symbol (default BTC/USDT:USDT)
  LIMIT_FACTOR       optional, limit-buy price = mark * LIMIT_FACTOR (default 0.97)
  PROJECT_READER     the project's reader (shared/examples/bitget_read.rs, built): every value
                     ccxt reads that the project also reads is compared with the project's reading

The double is vouched for twice: ccxt, a client nobody here wrote, must parse every answer, and
it must read the same values as this project's own client.

Every check prints "ok <check>"; the first failure prints "FAIL <check>: <why>"
and exits 1.  The account must start flat (no position, no open order) on the
symbol.  Pinned against ccxt 4.5.90 (pip install ccxt==4.5.90).
"""
import json
import math
import os
import subprocess
import sys
import traceback
from decimal import Decimal

import ccxt

SYMBOL = os.environ.get('BITGET_SYMBOL', 'BTC/USDT:USDT')
SMALL_SYMBOL = 'DOGE/USDT:USDT'
LIMIT_FACTOR = float(os.environ.get('LIMIT_FACTOR', '0.97'))
LEVERAGE = 10


class CheckFailed(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def is_num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def close(a, b, tol):
    return is_num(a) and is_num(b) and abs(a - b) <= tol


def expect_error(fn, err_type, what):
    """fn() must raise err_type (a ccxt exception class); returns the exception."""
    try:
        res = fn()
    except err_type as e:
        return e
    except Exception as e:  # wrong class
        raise CheckFailed('%s: expected %s, got %s: %s' % (what, err_type.__name__, type(e).__name__, e))
    raise CheckFailed('%s: expected %s, but the call succeeded: %r' % (what, err_type.__name__, res))


def make_exchange():
    url = os.environ['BITGET_URL'].rstrip('/')
    ex = ccxt.bitget({
        'apiKey': os.environ['BITGET_KEY'],
        'secret': os.environ['BITGET_SECRET'],
        'password': os.environ['BITGET_PASSPHRASE'],
        'enableRateLimit': True,
        'timeout': 10000,
        'options': {
            'defaultType': 'swap',            # fetch_balance etc. go to /api/v2/mix/...
            'defaultSubType': 'linear',       # productType USDT-FUTURES when no market is given
            'fetchMarkets': {'types': ['swap']},  # no spot symbols / margin currencies calls
            'uta': False,                     # never probe GET /api/v3/account/settings
            'adjustForTimeDifference': False,  # no GET /api/v2/public/time in load_markets
        },
    })
    ex.has['fetchCurrencies'] = False  # no GET /api/v2/spot/public/coins in load_markets
    ex.urls['api'] = {k: url for k in ex.urls['api']}  # spot, mix, common, uta, ... -> double
    return ex


class Ctx:
    """State shared between checks."""
    ex = None
    market = None
    mark = None
    amount = None
    limit_order_id = None


C = Ctx()


def amount_for(notional_factor=1.5):
    m = C.market
    min_amt = m['limits']['amount']['min'] or m['precision']['amount']
    min_cost = m['limits']['cost']['min'] or 5
    raw = max(min_amt, min_cost * notional_factor / C.mark)
    step = m['precision']['amount']
    return float(C.ex.amount_to_precision(SYMBOL, math.ceil(raw / step) * step))


def project(*args):
    """What this project's Bitget client reads (shared/examples/bitget_read.rs), as JSON."""
    out = subprocess.run([os.environ['PROJECT_READER'], os.environ['BITGET_URL'], *args],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise CheckFailed('project reader %s failed: %s' % (' '.join(args), out.stderr.strip()[-500:]))
    return json.loads(out.stdout)


def same(ccxt_value, project_value, what):
    """ccxt reads floats, the project exact decimals: equal to the last digit ccxt can carry."""
    expect(project_value is not None and ccxt_value is not None, '%s: ccxt %r, project %r' % (what, ccxt_value, project_value))
    a, b = Decimal(repr(float(ccxt_value))), Decimal(str(project_value))
    expect(abs(a - b) <= abs(b) * Decimal('1e-12'), '%s: ccxt reads %s, the project %s' % (what, a, b))


def position_for(hedged_side=None):
    """Open positions on SYMBOL with contracts > 0 (optionally one side only)."""
    pos = C.ex.fetch_positions([SYMBOL])
    pos = [p for p in pos if p['symbol'] == SYMBOL and (p['contracts'] or 0) > 0]
    if hedged_side:
        pos = [p for p in pos if p['side'] == hedged_side]
    return pos


# ---------------------------------------------------------------- checks

def check_load_markets():
    markets = C.ex.load_markets()
    expect(SYMBOL in markets, '%s missing from load_markets(); got %d markets: %s'
           % (SYMBOL, len(markets), list(markets)[:10]))
    m = C.ex.market(SYMBOL)
    expect(m['swap'] and m['linear'] and m['contract'], 'market is not a linear swap: %r' % m['type'])
    expect(m['settle'] == 'USDT' and m['id'] == SYMBOL.split('/')[0] + 'USDT', 'bad settle/id %r %r' % (m['settle'], m['id']))
    expect(m['active'] is True, 'market not active (symbolStatus=%r)' % m['info'].get('symbolStatus'))
    expect(m['contractSize'] == 1, 'contractSize %r != 1' % m['contractSize'])
    p = m['precision']
    expect(is_num(p['amount']) and 0 < p['amount'] <= 1, 'precision.amount %r' % p['amount'])
    expect(is_num(p['price']) and 0 < p['price'] <= 100, 'precision.price %r' % p['price'])
    lim = m['limits']
    expect(is_num(lim['amount']['min']) and lim['amount']['min'] > 0, 'limits.amount.min %r' % lim['amount']['min'])
    expect(is_num(lim['cost']['min']) and lim['cost']['min'] > 0, 'limits.cost.min %r (minTradeUSDT)' % lim['cost']['min'])
    expect(is_num(lim['leverage']['max']) and lim['leverage']['max'] >= LEVERAGE, 'limits.leverage.max %r' % lim['leverage']['max'])
    expect(is_num(m['taker']) and is_num(m['maker']), 'taker/maker fee %r/%r' % (m['taker'], m['maker']))
    C.market = m


def check_fetch_mark_price():
    t = C.ex.fetch_mark_price(SYMBOL)  # GET /api/v2/mix/market/symbol-price
    expect(t['symbol'] == SYMBOL, 'ticker symbol %r' % t['symbol'])
    expect(is_num(t['markPrice']) and t['markPrice'] > 0, 'markPrice %r' % t['markPrice'])
    C.mark = t['markPrice']
    C.amount = amount_for()
    same(C.mark, project('marks')[C.market['id']], 'mark price')


def check_fetch_tickers():
    ts = C.ex.fetch_tickers([SYMBOL])  # GET /api/v2/mix/market/tickers?productType=USDT-FUTURES
    expect(SYMBOL in ts, 'symbol missing from fetch_tickers: %s' % list(ts)[:5])
    t = ts[SYMBOL]
    expect(is_num(t['last']) and t['last'] > 0, 'last %r' % t['last'])
    expect(is_num(t['markPrice']) and t['markPrice'] > 0, 'markPrice %r' % t['markPrice'])


def load_candles(symbol_id, csv_text):
    """The double's own operator route (what `make candles` sends): a candle series for a symbol."""
    import urllib.request
    url = os.environ['BITGET_URL'].rstrip('/') + '/double/candles?symbol=' + symbol_id
    with urllib.request.urlopen(urllib.request.Request(url, data=csv_text.encode(), method='POST'), timeout=10) as r:
        expect(json.loads(r.read())['code'] == '00000', 'loading candles')


def check_fetch_ohlcv():
    # 300 one-minute candles ending with the current (forming) minute, and 300 from 40 days ago
    # (ccxt asks the history endpoint for those).
    now = C.ex.milliseconds() // 60000 * 60000
    old = now - 40 * 86400000
    rows = []
    for start in (old - 299 * 60000, now - 299 * 60000):
        for i in range(300):
            o = 60000 + (i % 17) * 10
            c = o + (5 if i % 3 else -5)
            rows.append('%d,%d,%d,%d,%d,%s' % (start + i * 60000, o, max(o, c) + 7, min(o, c) - 3, c, '1.5'))
    load_candles('BTCUSDT', 'time,open,high,low,close,volume\n' + '\n'.join(rows))
    recent = C.ex.fetch_ohlcv(SYMBOL, '5m', limit=20)  # GET /api/v2/mix/market/candles
    expect(len(recent) == 20, 'expected 20 five-minute candles, got %d' % len(recent))
    expect(all(a[0] < b[0] for a, b in zip(recent, recent[1:])), 'candles oldest first')
    expect(all(c[0] % 300000 == 0 for c in recent), 'five-minute candles start on five-minute boundaries')
    expect(all(c[3] <= min(c[1], c[4]) and c[2] >= max(c[1], c[4]) for c in recent), 'low <= open, close <= high')
    history = C.ex.fetch_ohlcv(SYMBOL, '1m', since=old - 100 * 60000, limit=50)  # GET .../history-candles
    expect(len(history) == 50 and history[0][0] >= old - 299 * 60000, 'history candles: %d from %r' % (len(history), history[:1]))
    # The project reads the same closed candles (the forming one never: it asks up to the last closed).
    project_closed = project('candles', 'BTCUSDT', '5m', str(now), '20')
    closed = [c for c in recent if c[0] + 300000 <= now]
    by_time = {p['open_time_ms']: p for p in project_closed}
    for c in closed[-5:]:
        p = by_time.get(c[0])
        expect(p is not None, 'the project did not read the candle of %d' % c[0])
        for i, field in enumerate(['open', 'high', 'low', 'close', 'volume'], start=1):
            same(c[i], p[field], 'candle %d %s' % (c[0], field))
    project_history = project('history', 'BTCUSDT', '1m', str(old - 100 * 60000), str(old - 50 * 60000), str(now))
    expect(len(project_history) == 50, 'the project reads 50 history candles, got %d' % len(project_history))
    by_time = {p['open_time_ms']: p for p in project_history}
    shared_times = [c for c in history if c[0] in by_time]
    expect(len(shared_times) >= 45, 'ccxt and the project read mostly the same history: %d in common' % len(shared_times))
    for c in shared_times:
        same(c[4], by_time[c[0]]['close'], 'history candle %d close' % c[0])


def check_fetch_balance():
    b = C.ex.fetch_balance({'type': 'swap'})  # GET /api/v2/mix/account/accounts
    expect('USDT' in b, 'no USDT in balance: %s' % [k for k in b if k.isupper()])
    u = b['USDT']
    expect(is_num(u['free']) and is_num(u['total']), 'USDT free/total not numbers: %r' % u)
    expect(u['total'] >= u['free'] - 1e-9 and u['free'] >= 0, 'USDT free %r > total %r' % (u['free'], u['total']))
    expect(u['free'] >= C.amount * C.mark / LEVERAGE * 3, 'not enough free USDT (%r) for the test orders' % u['free'])
    same(u['total'], project('account')['equity'], 'account equity')


def check_account_is_flat():
    expect(not position_for(), 'account must start without a %s position: %r' % (SYMBOL, position_for()))
    oo = C.ex.fetch_open_orders(SYMBOL)  # GET /api/v2/mix/order/orders-pending
    expect(oo == [], 'account must start without open orders: %r' % [o['id'] for o in oo])


def check_set_position_mode_one_way():
    r = C.ex.set_position_mode(False, SYMBOL)
    expect(r.get('code') == '00000' and r['data']['posMode'] == 'one_way_mode', 'response %r' % r)


def check_set_margin_mode_cross():
    r = C.ex.set_margin_mode('cross', SYMBOL)
    expect(r.get('code') == '00000' and r['data']['marginMode'] == 'crossed', 'response %r' % r)


def check_set_leverage():
    r = C.ex.set_leverage(LEVERAGE, SYMBOL)
    expect(r.get('code') == '00000', 'response %r' % r)
    d = r['data']
    expect(str(d.get('crossMarginLeverage') or d.get('longLeverage')) == str(LEVERAGE), 'leverage not applied: %r' % d)


def check_single_account_endpoint():
    # GET /api/v2/mix/account/account: the endpoint the project reads the position mode from.
    lev = C.ex.fetch_leverage(SYMBOL)
    expect(lev['longLeverage'] == LEVERAGE and lev['shortLeverage'] == LEVERAGE, 'leverage %r' % lev)
    mm = C.ex.fetch_margin_mode(SYMBOL)
    expect(mm['marginMode'] == 'cross', 'margin mode %r' % mm)
    expect(lev['info'].get('posMode') == 'one_way_mode', 'posMode %r' % lev['info'].get('posMode'))
    expect(project('position-mode', C.market['id']) == 'one_way_mode', 'the project does not read the one-way mode')


def check_set_leverage_out_of_range():
    too_high = int(C.market['limits']['leverage']['max']) + 1
    expect_error(lambda: C.ex.set_leverage(too_high, SYMBOL), ccxt.ExchangeError, 'set_leverage(%d)' % too_high)


def check_market_buy_fills():
    o = C.ex.create_order(SYMBOL, 'market', 'buy', C.amount)  # POST /api/v2/mix/order/place-order
    expect(o['id'], 'create_order returned no id: %r' % o['info'])
    f = C.ex.fetch_order(o['id'], SYMBOL)  # GET /api/v2/mix/order/detail
    expect(f['id'] == o['id'], 'fetched id %r != %r' % (f['id'], o['id']))
    expect(f['status'] == 'closed', 'status %r (state=%r)' % (f['status'], f['info'].get('state')))
    expect(close(f['filled'], C.amount, 1e-9), 'filled %r != amount %r' % (f['filled'], C.amount))
    expect(close(f['amount'], C.amount, 1e-9), 'amount %r != %r' % (f['amount'], C.amount))
    expect(f['side'] == 'buy' and f['type'] == 'market', 'side/type %r/%r' % (f['side'], f['type']))
    expect(is_num(f['average']) and f['average'] > 0, 'average %r' % f['average'])
    expect(f['reduceOnly'] is False, 'reduceOnly %r' % f['reduceOnly'])
    mine = project('order', C.market['id'], f['clientOrderId'])
    expect(mine['order_id'] == f['id'] and mine['status'] == 'filled', 'project reads order %r' % mine)
    same(f['filled'], mine['filled_size'], 'filled size')
    same(f['average'], mine['avg_price'], 'average price')
    same(f['fee']['cost'], mine['fee'], 'fee')


def check_position_opened_one_way():
    pos = position_for()
    expect(len(pos) == 1, 'expected one position, got %r' % pos)
    p = pos[0]
    expect(p['side'] == 'long', 'side %r' % p['side'])
    expect(close(p['contracts'], C.amount, 1e-9), 'contracts %r != %r' % (p['contracts'], C.amount))
    expect(p['hedged'] is False, 'hedged %r (posMode=%r)' % (p['hedged'], p['info'].get('posMode')))
    expect(p['marginMode'] == 'cross', 'marginMode %r' % p['marginMode'])
    expect(is_num(p['entryPrice']) and p['entryPrice'] > 0, 'entryPrice %r' % p['entryPrice'])
    expect(is_num(p['markPrice']) and p['markPrice'] > 0, 'markPrice %r' % p['markPrice'])
    expect(is_num(p['leverage']) and p['leverage'] == LEVERAGE, 'leverage %r' % p['leverage'])
    mine = [x for x in project('positions') if x['symbol'] == C.market['id']]
    expect(len(mine) == 1 and mine[0]['side'] == 'long', 'project reads positions %r' % mine)
    same(p['contracts'], mine[0]['size'], 'position size')
    same(p['entryPrice'], mine[0]['entry_price'], 'entry price')
    same(p['markPrice'], mine[0]['mark_price'], 'position mark')
    same(p['unrealizedPnl'], mine[0]['unrealized_pnl'], 'unrealized PnL')


def check_mode_changes_rejected_with_position():
    expect_error(lambda: C.ex.set_margin_mode('isolated', SYMBOL), ccxt.ExchangeError, 'set_margin_mode with a position')
    expect_error(lambda: C.ex.set_position_mode(True, SYMBOL), ccxt.ExchangeError, 'set_position_mode with a position')


def check_limit_buy_rests_open():
    price = float(C.ex.price_to_precision(SYMBOL, C.mark * LIMIT_FACTOR))
    o = C.ex.create_order(SYMBOL, 'limit', 'buy', C.amount, price)
    f = C.ex.fetch_order(o['id'], SYMBOL)
    expect(f['status'] == 'open', 'status %r (state=%r)' % (f['status'], f['info'].get('state')))
    expect(close(f['price'], price, 1e-9), 'price %r != %r' % (f['price'], price))
    mine = project('order', C.market['id'], f['clientOrderId'])
    expect(mine['status'] == 'open', 'the project reads a resting order as %r' % mine)
    expect(close(f['filled'] or 0.0, 0.0, 1e-12), 'filled %r' % f['filled'])
    expect(close(f['remaining'], C.amount, 1e-9), 'remaining %r' % f['remaining'])
    oo = C.ex.fetch_open_orders(SYMBOL)
    expect(o['id'] in [x['id'] for x in oo], 'order %s not in fetch_open_orders %r' % (o['id'], [x['id'] for x in oo]))
    C.limit_order_id = o['id']


def check_cancel_order():
    c = C.ex.cancel_order(C.limit_order_id, SYMBOL)  # POST /api/v2/mix/order/cancel-order
    expect(c['id'] == C.limit_order_id, 'cancel returned id %r' % c['id'])
    f = C.ex.fetch_order(C.limit_order_id, SYMBOL)
    expect(f['status'] == 'canceled', 'status %r (state=%r)' % (f['status'], f['info'].get('state')))
    oo = C.ex.fetch_open_orders(SYMBOL)
    expect(C.limit_order_id not in [x['id'] for x in oo], 'canceled order still in fetch_open_orders')


def check_cancel_twice_rejected():
    expect_error(lambda: C.ex.cancel_order(C.limit_order_id, SYMBOL), ccxt.ExchangeError, 'second cancel_order')


def check_fetch_unknown_order():
    expect_error(lambda: C.ex.fetch_order('1', SYMBOL), ccxt.OrderNotFound, 'fetch_order of unknown id (40109)')


def check_duplicate_client_oid_rejected():
    price = float(C.ex.price_to_precision(SYMBOL, C.mark * LIMIT_FACTOR))
    cid = 'ccxtcheck%d' % C.ex.milliseconds()
    o = C.ex.create_order(SYMBOL, 'limit', 'buy', C.amount, price, {'clientOrderId': cid})
    expect(o['clientOrderId'] == cid, 'clientOrderId %r' % o['clientOrderId'])
    try:
        expect_error(lambda: C.ex.create_order(SYMBOL, 'limit', 'buy', C.amount, price, {'clientOrderId': cid}),
                     ccxt.ExchangeError, 'second order with the same clientOid')
    finally:
        C.ex.cancel_order(o['id'], SYMBOL)
    f = C.ex.fetch_order(None, SYMBOL, {'clientOrderId': cid})  # detail?clientOid=...
    expect(f['id'] == o['id'] and f['status'] == 'canceled', 'by clientOid: id %r status %r' % (f['id'], f['status']))


def check_below_min_notional_rejected():
    # A contract whose minimum size is worth less than its minimum notional (1 DOGE < 5 USDT).
    symbol = SMALL_SYMBOL
    m = C.ex.market(symbol)
    tiny = float(C.ex.amount_to_precision(symbol, m['limits']['amount']['min']))
    mark = C.ex.fetch_mark_price(symbol)['markPrice']
    expect(tiny * mark < m['limits']['cost']['min'], '%s: min amount %s is worth %s, not below %s USDT' % (symbol, tiny, tiny * mark, m['limits']['cost']['min']))
    expect_error(lambda: C.ex.create_order(symbol, 'market', 'buy', tiny), ccxt.InvalidOrder, 'order below minTradeUSDT (45110)')


def check_reduce_only_sell_closes():
    o = C.ex.create_order(SYMBOL, 'market', 'sell', C.amount, None, {'reduceOnly': True})
    f = C.ex.fetch_order(o['id'], SYMBOL)
    expect(f['status'] == 'closed', 'status %r' % f['status'])
    expect(f['side'] == 'sell' and f['reduceOnly'] is True, 'side/reduceOnly %r/%r' % (f['side'], f['reduceOnly']))
    expect(close(f['filled'], C.amount, 1e-9), 'filled %r' % f['filled'])
    expect(not position_for(), 'position still open after reduce-only sell: %r' % position_for())


def check_hedge_mode_open_and_close():
    r = C.ex.set_position_mode(True, SYMBOL)
    expect(r['data']['posMode'] == 'hedge_mode', 'response %r' % r)
    expect(project('position-mode', C.market['id']) == 'hedge_mode', 'the project does not read the hedge mode')
    try:
        o = C.ex.create_order(SYMBOL, 'market', 'buy', C.amount, None, {'hedged': True})  # side=buy tradeSide=Open
        f = C.ex.fetch_order(o['id'], SYMBOL)
        expect(f['status'] == 'closed' and f['side'] == 'buy' and f['reduceOnly'] is False,
               'open long: status %r side %r reduceOnly %r' % (f['status'], f['side'], f['reduceOnly']))
        pos = position_for('long')
        expect(len(pos) == 1 and pos[0]['hedged'] is True and close(pos[0]['contracts'], C.amount, 1e-9),
               'hedge long position %r' % pos)
        # close long: ccxt sends side=buy tradeSide=Close, and flips side back to 'sell' when parsing
        c = C.ex.create_order(SYMBOL, 'market', 'sell', C.amount, None, {'hedged': True, 'reduceOnly': True})
        f = C.ex.fetch_order(c['id'], SYMBOL)
        expect(f['status'] == 'closed', 'close long status %r' % f['status'])
        expect(f['side'] == 'sell' and f['reduceOnly'] is True,
               'close long parsed side %r reduceOnly %r (raw side=%r reduceOnly=%r tradeSide=%r)'
               % (f['side'], f['reduceOnly'], f['info'].get('side'), f['info'].get('reduceOnly'), f['info'].get('tradeSide')))
        expect(not position_for(), 'hedge position still open: %r' % position_for())
    finally:
        if not position_for():
            C.ex.set_position_mode(False, SYMBOL)


def check_fetch_my_trades():
    # GET /api/v2/mix/order/fills: every fill of the checks above, newest first, with its fee.
    now = C.ex.milliseconds()
    trades = C.ex.fetch_my_trades(SYMBOL, now - 3600 * 1000, 100, {'until': now})
    expect(len(trades) >= 4, 'expected the fills of the orders above, got %r' % [t['info'] for t in trades])
    mine = {f['trade_id']: f for f in project('fills', str(now - 3600 * 1000), str(now)) if f['symbol'] == C.market['id']}
    expect(len(mine) == len(trades), 'ccxt reads %d fills, the project %d' % (len(trades), len(mine)))
    for t in trades:
        f = mine.get(t['id'])
        expect(f is not None, 'the project does not read fill %r' % t['id'])
        expect(t['order'] == f['order_id'], 'fill %s: order %r != %r' % (t['id'], t['order'], f['order_id']))
        same(t['amount'], f['size'], 'fill size')
        same(t['price'], f['price'], 'fill price')
        same(t['fee']['cost'], f['fee'], 'fill fee')
        expect(t['fee']['cost'] > 0, 'a fill pays its fee: %r' % t['fee'])
        expect(t['timestamp'] == f['filled_ms'], 'fill %s time %r != %r' % (t['id'], t['timestamp'], f['filled_ms']))
    expect([t['timestamp'] for t in trades] == sorted(t['timestamp'] for t in trades), 'ccxt sorts trades oldest first')


def check_fetch_closed_orders():
    # GET /api/v2/mix/order/orders-history: the ended orders, each with its client id.
    now = C.ex.milliseconds()
    closed = C.ex.fetch_closed_orders(SYMBOL, now - 3600 * 1000, 100, {'until': now})
    expect(closed and all(o['status'] in ('closed', 'canceled') for o in closed), 'closed orders %r' % [o['info'] for o in closed])
    for o in closed:
        expect(o['clientOrderId'], 'order %s has no client id: %r' % (o['id'], o['info']))
    mine = project('ended-orders', str(now - 3600 * 1000), str(now))
    expect(all(mine.get(o['id']) == o['clientOrderId'] for o in closed), 'the project reads %r' % mine)


CHECKS = [
    check_load_markets,
    check_fetch_mark_price,
    check_fetch_tickers,
    check_fetch_ohlcv,
    check_fetch_balance,
    check_account_is_flat,
    check_set_position_mode_one_way,
    check_set_margin_mode_cross,
    check_set_leverage,
    check_single_account_endpoint,
    check_set_leverage_out_of_range,
    check_fetch_unknown_order,
    check_below_min_notional_rejected,
    check_market_buy_fills,
    check_position_opened_one_way,
    check_mode_changes_rejected_with_position,
    check_limit_buy_rests_open,
    check_cancel_order,
    check_cancel_twice_rejected,
    check_duplicate_client_oid_rejected,
    check_reduce_only_sell_closes,
    check_hedge_mode_open_and_close,
    check_fetch_my_trades,
    check_fetch_closed_orders,
]


def main():
    missing = [v for v in ('BITGET_URL', 'BITGET_KEY', 'BITGET_SECRET', 'BITGET_PASSPHRASE', 'PROJECT_READER') if not os.environ.get(v)]
    if missing:
        print('FAIL setup: missing env %s' % ', '.join(missing))
        return 2
    print('ccxt %s against %s' % (ccxt.__version__, os.environ['BITGET_URL']))
    C.ex = make_exchange()
    for check in CHECKS:
        name = check.__name__[len('check_'):]
        try:
            note = check()
        except CheckFailed as e:
            print('FAIL %s: %s' % (name, e))
            return 1
        except Exception as e:
            print('FAIL %s: %s: %s' % (name, type(e).__name__, e))
            if os.environ.get('VERBOSE'):
                traceback.print_exc()
            return 1
        print('ok %s%s' % (name, ' (%s)' % note if note else ''))
    print('all %d checks passed' % len(CHECKS))
    return 0


if __name__ == '__main__':
    sys.exit(main())
