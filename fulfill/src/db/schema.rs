// @generated automatically by Diesel CLI.

diesel::table! {
    balances (account, user_id) {
        user_id -> Text,
        credits -> Int8,
        updated_at -> Timestamptz,
        sequence -> Int8,
        account -> Text,
    }
}

diesel::table! {
    checkout_sessions (session_id) {
        session_id -> Text,
        state -> Text,
        user_id -> Nullable<Text>,
        credits -> Nullable<Int8>,
        reason -> Nullable<Text>,
        stripe_status -> Nullable<Text>,
        payment_status -> Nullable<Text>,
        payment_intent_id -> Nullable<Text>,
        amount_total -> Nullable<Int8>,
        currency -> Nullable<Text>,
        livemode -> Nullable<Bool>,
        last_event_id -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        reversed_credits -> Int8,
        attention -> Nullable<Text>,
        fetch_lease_until -> Nullable<Timestamptz>,
        view_started_at -> Nullable<Timestamptz>,
        account -> Text,
    }
}

diesel::table! {
    credit_events (id) {
        id -> Int8,
        event_id -> Text,
        routing_key -> Text,
        user_id -> Nullable<Text>,
        sequence -> Nullable<Int8>,
        payload -> Jsonb,
        created_at -> Timestamptz,
        sent_at -> Nullable<Timestamptz>,
        account -> Text,
    }
}

diesel::table! {
    credit_lots (id) {
        id -> Int8,
        user_id -> Text,
        entry_id -> Nullable<Int8>,
        stripe_session_id -> Nullable<Text>,
        credits -> Int8,
        remaining -> Int8,
        expires_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        account -> Text,
    }
}

diesel::table! {
    holds (hold_id) {
        hold_id -> Text,
        user_id -> Text,
        amount -> Int8,
        status -> Text,
        captured -> Nullable<Int8>,
        reason -> Nullable<Text>,
        expires_at -> Timestamptz,
        settled -> Nullable<Jsonb>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        account -> Text,
    }
}

diesel::table! {
    idempotency_keys (account, key) {
        key -> Text,
        fingerprint -> Text,
        status -> Int2,
        response -> Jsonb,
        created_at -> Timestamptz,
        account -> Text,
    }
}

diesel::table! {
    ledger_entries (id) {
        id -> Int8,
        user_id -> Text,
        delta -> Int8,
        reason -> Text,
        idempotency_key -> Text,
        stripe_session_id -> Nullable<Text>,
        stripe_event_id -> Nullable<Text>,
        stripe_object_id -> Nullable<Text>,
        created_at -> Timestamptz,
        component -> Nullable<Text>,
        debit_id -> Nullable<Text>,
        hold_id -> Nullable<Text>,
        grant_id -> Nullable<Text>,
        memo -> Nullable<Text>,
        metadata -> Nullable<Jsonb>,
        sequence -> Nullable<Int8>,
        account -> Text,
    }
}

diesel::table! {
    reconcile_cursors (name) {
        name -> Text,
        created_gte -> Int8,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    stripe_rate_budget (name) {
        name -> Text,
        next_slot -> Timestamptz,
    }
}

diesel::table! {
    stripe_events (event_id) {
        event_id -> Text,
        event_type -> Text,
        object_id -> Nullable<Text>,
        outcome -> Text,
        received_at -> Timestamptz,
    }
}

diesel::joinable!(credit_lots -> ledger_entries (entry_id));

diesel::allow_tables_to_appear_in_same_query!(
    balances,
    checkout_sessions,
    credit_events,
    credit_lots,
    holds,
    idempotency_keys,
    ledger_entries,
    reconcile_cursors,
    stripe_events,
    stripe_rate_budget,
);
