CREATE OR REPLACE FUNCTION movrec._online_refit(user_id integer, model_id bigint) RETURNS real[]
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import online; return online.refit_from_sql(user_id, model_id)
$$;
COMMENT ON FUNCTION movrec._online_refit(integer, bigint) IS
    'Fold-in: the user''s [vector | bias] solving their ridge regression over all their ratings, movie side fixed '
    '(used by the rating trigger when movrec.online_update = refit)';
