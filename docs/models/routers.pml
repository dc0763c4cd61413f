/* A model of the routers' rules without the lease check: two routers that both apply one partition's requests, each in two steps. */
/*
   The old router lost its lease and never notices; the functions do not
   check the lease. Each request has a user step (in the user's slot) and
   a later step (in a room's slot: every request goes to the same room,
   the case with most contention). The question (docs/design.md, "Running
   on a Redis Cluster"): are these rules enough for each user's requests
   to take effect once each and in order, in both slots?
   - a last applied id per user, and the `prev` rule: a user step applies
     only if the user's last applied id is the one of the same user's
     call before it in the pipeline;
   - the pending-first rule: before a batch, anything else pending is
     claimed and applied first, in id order;
   - the later step's own prev rule: the user step gives it the id of the
     same user's previous request to the room (kept in the user's slot,
     stored with the decision), and the room applies it only right after
     that one (it keeps the last id it applied per user).
   Any call may fail (a transient error, `moved`: not run); acknowledged
   are the entries before the first whose user step or later step failed.
   scripts/model-check.sh runs it, and runs it again without each rule to
   show that each is needed.
*/

#define N 4          /* requests, ids 1..N, in stream order */
#define USERS 2
/* the user of each request: a1 b1 a2 b2 */
byte user[N+1];
#define UNREAD 0
#define PENDING 1
#define ACKED 2

byte state[N+1];     /* per entry */
byte owner[N+1];     /* consumer holding a pending entry */
byte applied[USERS]; /* each user's last applied id (in its own slot) */
byte last[USERS];    /* each user's last request whose effect took place */
byte seq[N+1];       /* each request's place among its user's: 1, 2, ... */
byte lastTo[USERS];  /* user's slot: its last request to the room */
byte plan[N+1];      /* the decision stored with a request: the prev of its later step */
byte mark[USERS];    /* room's slot: the last id applied per user */
byte tlast[USERS];   /* each user's last request whose later step took effect */
byte done = 0;       /* later steps applied */

inline apply_one(e, prev, ok) {
  atomic {
    u = user[e];
    if
    :: applied[u] >= e -> ok = 1            /* duplicate: acknowledged, no effect */
    :: else ->
       if
       :: prev != 0 && applied[u] != prev -> ok = 0   /* retry; RULE:prev */
       :: else ->
          /* in the user's order, none skipped, none twice */
          assert(seq[e] == last[u] + 1);
          last[u] = seq[e]; applied[u] = e;
          plan[e] = lastTo[u]; lastTo[u] = e; ok = 1
       fi
    fi
  }
}

inline apply_later(e, ok) {
  atomic {
    u = user[e];
    if
    :: mark[u] >= e -> ok = 1               /* duplicate */
    :: else ->
       if
       :: mark[u] != plan[e] -> ok = 0       /* retry; RULE:step-prev */
       :: else ->
          assert(seq[e] == tlast[u] + 1);
          tlast[u] = seq[e]; mark[u] = e; done++; ok = 1
       fi
    fi
  }
}

proctype Router(byte me) {
  byte batch[N+1];   /* batch[i] = 1 if entry i is in the batch */
  byte first[N+1];   /* first[i] = 1 if entry i's user step is done */
  byte i, j, ok, other, stop, any, u;
  byte prevs[USERS];  /* the id of each user's call before, in this pipeline */
  do
  :: (done == N) -> break
  :: else ->
     /* XREADGROUP >: some next unread entries (at least one if any) */
     atomic {
       i = 1; any = 0;
       do
       :: i > N -> break
       :: i <= N && state[i] != UNREAD -> batch[i] = 0; i++
       :: i <= N && state[i] == UNREAD ->
          if
          :: state[i] = PENDING; owner[i] = me; batch[i] = 1; any = 1; i++
          :: any == 1 -> break   /* stop reading here */
          fi
       od;
       do :: i <= N -> batch[i] = 0; i++ :: else -> break od
     }
     /* XPENDING: anything pending besides the batch? then XAUTOCLAIM all */
     atomic {
       other = 0; i = 1;
       do
       :: i > N -> break
       :: i <= N -> if :: state[i] == PENDING && batch[i] == 0 -> other = 1 :: else fi; i++
       od
     }
     if
     :: other == 1 ->    /* RULE:pending-first */
        atomic {
          i = 1;
          do
          :: i > N -> break
          :: i <= N ->
             if
             :: state[i] == PENDING -> owner[i] = me; batch[i] = 1
             :: else -> batch[i] = 0
             fi; i++
          od
        }
     :: else
     fi;
     /* the user steps, in id order, pipelined: each call carries the id
        of the same user's call before it (prev); a call that fails
        (transient error, or `retry`) does not stop the later ones */
     u = 0;
     do :: u < USERS -> prevs[u] = 0; u++ :: else -> break od;
     stop = N + 1; i = 1;
     do
     :: i > N -> break
     :: i <= N && batch[i] == 0 -> i++
     :: i <= N && batch[i] == 1 ->
        if
        :: apply_one(i, prevs[user[i]], ok)
        :: ok = 0   /* transient failure: not run */
        fi;
        first[i] = ok;
        if
        :: !ok && stop > i -> stop = i
        :: else
        fi;
        prevs[user[i]] = i; i++
     od;
     /* then the later steps of those whose user step is done, in id
        order, pipelined (to the room's master) */
     i = 1;
     do
     :: i > N -> break
     :: i <= N && (batch[i] == 0 || first[i] == 0) -> i++
     :: i <= N && batch[i] == 1 && first[i] == 1 ->
        if
        :: apply_later(i, ok)
        :: ok = 0   /* transient failure: not run */
        fi;
        if
        :: !ok && stop > i -> stop = i
        :: else
        fi;
        i++
     od;
     /* XACK of those before the first that failed */
     atomic {
       j = 1;
       do
       :: j >= stop || j > N -> break
       :: else -> if :: batch[j] == 1 -> state[j] = ACKED :: else fi; j++
       od
     }
  od
}

init {
  atomic {
    user[1] = 0; seq[1] = 1;   /* a1 */
    user[2] = 1; seq[2] = 1;   /* b1 */
    user[3] = 0; seq[3] = 2;   /* a2 */
    user[4] = 1; seq[4] = 2;   /* b2 */
    run Router(1); run Router(2)
  }
}
